// Package admission holds the building blocks of mcpgate's admission
// controller: method classes and priorities, an in-flight limiter with a
// bounded priority wait queue, per-key limits and rates with bounded memory,
// the client key of an IP address, an adaptive controller that sets the
// in-flight limit from observed latencies, the service levels and what they
// admit, the room a new session needs in the session table
// (RoomForSession) and the slots of an SSE stream (StreamSlots).
//
// The package imports the standard library and resources.
package admission

import "strings"

// Class is the cost class of an MCP message, used to order and shed work:
// cheap messages are served first and shed last.
type Class uint8

const (
	// ClassCheap covers messages that cost an upstream almost nothing: ping,
	// every notification (including notifications/cancelled and
	// notifications/initialized), JSON-RPC responses that a client sends back
	// to server requests, and initialize. Whether an initialize belongs to an
	// existing client or opens a new session is carried by the inSession flag
	// of PriorityOf, not by the class.
	ClassCheap Class = iota

	// ClassList covers light requests: tools/list, resources/list,
	// resources/templates/list, prompts/list, completion/complete,
	// logging/setLevel, resources/subscribe, resources/unsubscribe,
	// roots/list, tasks/list, tasks/get and tasks/cancel.
	ClassList

	// ClassHeavy covers requests that may run for a long time or do real
	// work upstream: tools/call, resources/read, prompts/get,
	// sampling/createMessage, elicitation/create, tasks/result, and every
	// method this package does not know.
	ClassHeavy
)

// NumClasses is the number of distinct Class values.
const NumClasses = 3

// ClassOf returns the class of a JSON-RPC message. isResponse reports a
// JSON-RPC response (a result or error that a client sends back to a server
// request); isNotification reports a message without an id. Both are cheap
// whatever the method. Methods under "notifications/" are cheap even when
// sent with an id. Unknown methods are heavy. ClassOf does not allocate.
func ClassOf(method string, isResponse, isNotification bool) Class {
	if isResponse || isNotification {
		return ClassCheap
	}
	switch method {
	case "ping", "initialize":
		return ClassCheap
	case "tools/list",
		"resources/list",
		"resources/templates/list",
		"prompts/list",
		"completion/complete",
		"logging/setLevel",
		"resources/subscribe",
		"resources/unsubscribe",
		"roots/list",
		"tasks/list",
		"tasks/get",
		"tasks/cancel":
		return ClassList
	case "tools/call",
		"resources/read",
		"prompts/get",
		"sampling/createMessage",
		"elicitation/create",
		"tasks/result":
		return ClassHeavy
	}
	if strings.HasPrefix(method, "notifications/") {
		return ClassCheap
	}
	return ClassHeavy
}

// String returns the class name used as a metrics label: "cheap", "list" or
// "heavy" ("unknown" for an out-of-range value).
func (c Class) String() string {
	switch c {
	case ClassCheap:
		return "cheap"
	case ClassList:
		return "list"
	case ClassHeavy:
		return "heavy"
	}
	return "unknown"
}

// Priority orders waiting requests. It combines a Class with whether the
// request belongs to an existing session. A larger value is served first and
// evicted last; from highest to lowest the order is PriorityCheapSession,
// PriorityListSession, PriorityHeavySession, PriorityCheapNew,
// PriorityListNew, PriorityHeavyNew. Every in-session request outranks every
// request that does not belong to an existing session, so admitted sessions
// keep working while new work is shed first.
type Priority uint8

const (
	// PriorityHeavyNew is a heavy request outside an existing session.
	PriorityHeavyNew Priority = iota
	// PriorityListNew is a light request outside an existing session.
	PriorityListNew
	// PriorityCheapNew is a cheap message outside an existing session, such
	// as the initialize that opens a new session.
	PriorityCheapNew
	// PriorityHeavySession is a heavy request of an existing session.
	PriorityHeavySession
	// PriorityListSession is a light request of an existing session.
	PriorityListSession
	// PriorityCheapSession is a cheap message of an existing session.
	PriorityCheapSession
)

// NumPriorities is the number of distinct Priority values; valid priorities
// are 0 to NumPriorities-1.
const NumPriorities = 6

// PriorityOf combines a class and session membership into a Priority. A class
// outside the known range is treated as ClassHeavy.
func PriorityOf(c Class, inSession bool) Priority {
	if c > ClassHeavy {
		c = ClassHeavy
	}
	if inSession {
		return PriorityCheapSession - Priority(c)
	}
	return PriorityCheapNew - Priority(c)
}

// Class returns the class the priority was built from.
func (p Priority) Class() Class {
	if p >= NumPriorities {
		return ClassHeavy
	}
	if p >= PriorityHeavySession {
		return Class(PriorityCheapSession - p)
	}
	return Class(PriorityCheapNew - p)
}

// InSession reports whether the priority belongs to a request of an existing
// session.
func (p Priority) InSession() bool {
	return p >= PriorityHeavySession && p < NumPriorities
}

// String returns the priority name used as a metrics label, such as
// "cheap_session" or "heavy_new" ("unknown" for an out-of-range value).
func (p Priority) String() string {
	switch p {
	case PriorityCheapSession:
		return "cheap_session"
	case PriorityListSession:
		return "list_session"
	case PriorityHeavySession:
		return "heavy_session"
	case PriorityCheapNew:
		return "cheap_new"
	case PriorityListNew:
		return "list_new"
	case PriorityHeavyNew:
		return "heavy_new"
	}
	return "unknown"
}
