package admission

// Admits reports whether the service level lets a request in: at the
// protective level only traffic that finishes work already in flight
// (responses, notifications, DELETE); at the essential level anything but
// a request that opens a session. When it does not, why says so, for the
// client's error message.
func (l Level) Admits(finishing, opensSession bool) (ok bool, why string) {
	switch {
	case l == LevelProtective && !finishing:
		return false, "server overloaded (protective level)"
	case l >= LevelEssential && opensSession:
		return false, "server overloaded (essential level): no new sessions"
	}
	return true, ""
}
