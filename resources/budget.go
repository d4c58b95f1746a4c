package resources

import (
	"math"
	"sync/atomic"
)

// Budget counts bytes reserved against a limit. It is the process-wide
// memory budget that every buffered byte of every stream is reserved from,
// and the parent of each session's Account.
//
// A Budget never over-commits: Reserve succeeds only if the bytes already
// reserved plus the request fit under the limit at the instant of a single
// compare-and-swap. It holds no lock and allocates nothing; all methods are
// safe for concurrent use.
type Budget struct {
	used     atomic.Int64
	limit    atomic.Int64
	refusals atomic.Uint64
}

// NewBudget returns a budget of limit bytes. A limit of zero or less means
// unlimited: every reservation succeeds, but the bytes are still counted.
func NewBudget(limit int64) *Budget {
	b := &Budget{}
	b.limit.Store(limit)
	return b
}

// Reserve takes n bytes from the budget and reports whether it could. It
// refuses, counts a refusal and changes nothing when the bytes in use plus
// n would exceed the limit. Reserving zero or fewer bytes is a no-op that
// succeeds.
func (b *Budget) Reserve(n int64) bool {
	if n <= 0 {
		return true
	}
	for {
		used := b.used.Load()
		limit := b.limit.Load()
		if limit > 0 {
			if n > limit-used {
				b.refusals.Add(1)
				return false
			}
		} else if used > math.MaxInt64-n {
			b.refusals.Add(1)
			return false
		}
		if b.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

// Release returns n bytes to the budget. Releasing more than is in use is a
// caller bug; the count stops at zero rather than going negative, so the
// budget cannot grant more than its limit afterwards. Releasing zero or
// fewer bytes is a no-op.
func (b *Budget) Release(n int64) {
	if n > 0 {
		lower(&b.used, n)
	}
}

// Used returns the bytes currently reserved.
func (b *Budget) Used() int64 { return b.used.Load() }

// Limit returns the limit in bytes; zero or less means unlimited.
func (b *Budget) Limit() int64 { return b.limit.Load() }

// SetLimit changes the limit. Lowering it below the bytes in use keeps the
// existing reservations; new ones are refused until enough is released.
func (b *Budget) SetLimit(limit int64) { b.limit.Store(limit) }

// Refusals returns how many reservations the budget has refused since it
// was created.
func (b *Budget) Refusals() uint64 { return b.refusals.Load() }

// Pressure returns the bytes in use divided by the limit, clamped to
// [0, 1]. It is 0 for an unlimited budget.
func (b *Budget) Pressure() float64 {
	limit := b.limit.Load()
	if limit <= 0 {
		return 0
	}
	return clamp01(float64(b.used.Load()) / float64(limit))
}

// accountClosed is the value of Account.used once the account is closed.
const accountClosed = -1

// Account is one session's share of memory: a quota of its own chained to a
// parent Budget. A reservation succeeds only if it fits both the quota and
// the parent, and then it is held in both; otherwise it is held in neither.
//
// The account's count only ever includes bytes already held in the parent
// (the parent is reserved first and the account second, and a refused
// second step gives the parent its bytes back), so Close releases exactly
// what the account holds. After Close, Reserve refuses and Release does
// nothing. The account holds no lock and allocates nothing; all methods are
// safe for concurrent use.
type Account struct {
	quota  int64
	parent *Budget // may be nil
	// tally, when set, is a second unlimited counter kept in step with the
	// account (the Registry's total of session bytes).
	tally *atomic.Int64
	used  atomic.Int64 // accountClosed once closed
}

// NewAccount returns an account with its own quota in bytes (zero or less:
// no quota of its own) whose reservations are also taken from parent. A nil
// parent leaves only the quota.
func NewAccount(quota int64, parent *Budget) *Account {
	return &Account{quota: quota, parent: parent}
}

// Reserve takes n bytes from the account and its parent and reports whether
// it could. On refusal by either, nothing is held by either. A closed
// account refuses. Reserving zero or fewer bytes is a no-op that succeeds
// (also on a closed account).
func (a *Account) Reserve(n int64) bool {
	if n <= 0 {
		return true
	}
	// Cheap check first, so a session over its own quota does not briefly
	// take bytes from the parent that others may need.
	if u := a.used.Load(); u == accountClosed || (a.quota > 0 && n > a.quota-u) {
		return false
	}
	if a.parent != nil && !a.parent.Reserve(n) {
		return false
	}
	for {
		u := a.used.Load()
		if u == accountClosed || (a.quota > 0 && n > a.quota-u) || u > math.MaxInt64-n {
			if a.parent != nil {
				a.parent.Release(n)
			}
			return false
		}
		if a.used.CompareAndSwap(u, u+n) {
			if a.tally != nil {
				a.tally.Add(n)
			}
			return true
		}
	}
}

// Release returns n bytes to the account and its parent. Releasing more
// than the account holds releases only what it holds. On a closed account
// it does nothing: Close already gave everything back.
func (a *Account) Release(n int64) {
	if n <= 0 {
		return
	}
	if freed := lower(&a.used, n); freed > 0 {
		a.giveBack(freed)
	}
}

// lower takes n (> 0) from a count of bytes, stopping at zero, and returns
// how much it took. A count below zero (a closed account) is left alone.
func lower(count *atomic.Int64, n int64) (taken int64) {
	for {
		u := count.Load()
		if u <= 0 {
			return 0
		}
		next := max(u-n, 0)
		if count.CompareAndSwap(u, next) {
			return u - next
		}
	}
}

// Used returns the bytes the account holds; zero once closed.
func (a *Account) Used() int64 { return max(a.used.Load(), 0) }

// Quota returns the account's own quota in bytes; zero or less means none.
func (a *Account) Quota() int64 { return a.quota }

// Closed reports whether Close has been called.
func (a *Account) Closed() bool { return a.used.Load() == accountClosed }

// Close releases everything the account still holds back to its parent,
// returns the number of bytes freed, and makes every later Reserve fail.
// Closing a closed account returns 0.
func (a *Account) Close() int64 {
	u := a.used.Swap(accountClosed)
	if u <= 0 {
		return 0
	}
	a.giveBack(u)
	return u
}

func (a *Account) giveBack(n int64) {
	if a.parent != nil {
		a.parent.Release(n)
	}
	if a.tally != nil {
		a.tally.Add(-n)
	}
}

func clamp01(v float64) float64 {
	switch {
	case v > 1:
		return 1
	case v > 0:
		return v
	default: // also NaN
		return 0
	}
}
