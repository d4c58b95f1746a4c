package resources

import (
	"slices"
	"testing"
)

func values(l *List[int]) []int {
	var out []int
	for e := l.Front(); e != nil; e = e.Next() {
		out = append(out, e.Value)
	}
	var back []int
	for e := l.Back(); e != nil; e = e.Prev() {
		back = append(back, e.Value)
	}
	slices.Reverse(back)
	if !slices.Equal(out, back) {
		panic("the links disagree")
	}
	return out
}

func TestList(t *testing.T) {
	var l List[int]
	if l.Front() != nil || l.Back() != nil {
		t.Fatal("zero List not empty")
	}
	n := make([]Node[int], 4)
	for i := range n {
		n[i].Value = i
		l.PushBack(&n[i])
	}
	steps := []struct {
		name string
		do   func()
		want []int
	}{
		{"pushed", func() {}, []int{0, 1, 2, 3}},
		{"remove middle", func() { l.Remove(&n[1]) }, []int{0, 2, 3}},
		{"remove front", func() { l.Remove(&n[0]) }, []int{2, 3}},
		{"move front to back", func() { l.MoveToBack(&n[2]) }, []int{3, 2}},
		{"move back to back", func() { l.MoveToBack(&n[2]) }, []int{3, 2}},
		{"push again", func() { l.PushBack(&n[0]) }, []int{3, 2, 0}},
		{"remove back", func() { l.Remove(&n[0]) }, []int{3, 2}},
		{"remove all", func() { l.Remove(&n[3]); l.Remove(&n[2]) }, nil},
	}
	for _, s := range steps {
		s.do()
		if got := values(&l); !slices.Equal(got, s.want) {
			t.Errorf("%s: %v, want %v", s.name, got, s.want)
		}
	}
	if l.Front() != nil || l.Back() != nil {
		t.Error("emptied List not empty")
	}
}
