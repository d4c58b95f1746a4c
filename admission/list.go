package admission

// listNode is an element of a list: its links and the value it holds.
type listNode[T any] struct {
	prev, next *listNode[T]
	val        T
}

// list is a doubly linked list of nodes its user allocates (and may pool),
// so that linking and unlinking allocate nothing and take O(1). The zero
// list is empty.
type list[T any] struct {
	head, tail *listNode[T]
}

// pushBack links e at the tail.
func (l *list[T]) pushBack(e *listNode[T]) {
	e.prev, e.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
}

// remove unlinks e, which must be in the list.
func (l *list[T]) remove(e *listNode[T]) {
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
