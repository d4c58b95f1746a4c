package resources

// Node is an element of a List: its links and the value it holds.
type Node[T any] struct {
	prev, next *Node[T]
	Value      T
}

// Next returns the node after e, nil at the back.
func (e *Node[T]) Next() *Node[T] { return e.next }

// Prev returns the node before e, nil at the front.
func (e *Node[T]) Prev() *Node[T] { return e.prev }

// List is a doubly linked list of nodes its user allocates (and may
// pool), so that linking and unlinking allocate nothing and take O(1).
// The zero List is empty. It is not safe for concurrent use.
type List[T any] struct {
	head, tail *Node[T]
}

// Front returns the first node, nil when the list is empty.
func (l *List[T]) Front() *Node[T] { return l.head }

// Back returns the last node, nil when the list is empty.
func (l *List[T]) Back() *Node[T] { return l.tail }

// PushBack links e, which must be in no list, at the back.
func (l *List[T]) PushBack(e *Node[T]) {
	e.prev, e.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
}

// Remove unlinks e, which must be in the list.
func (l *List[T]) Remove(e *Node[T]) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

// MoveToBack moves e, which must be in the list, to the back.
func (l *List[T]) MoveToBack(e *Node[T]) {
	if l.tail != e {
		l.Remove(e)
		l.PushBack(e)
	}
}
