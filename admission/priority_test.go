package admission

import "testing"

func TestClassOf(t *testing.T) {
	tests := []struct {
		method         string
		isResponse     bool
		isNotification bool
		want           Class
	}{
		{"ping", false, false, ClassCheap},
		{"initialize", false, false, ClassCheap},
		{"notifications/cancelled", false, true, ClassCheap},
		{"notifications/initialized", false, true, ClassCheap},
		{"notifications/progress", false, false, ClassCheap},
		{"tools/call", false, true, ClassCheap},
		{"", true, false, ClassCheap},
		{"tools/call", true, false, ClassCheap},
		{"tools/list", false, false, ClassList},
		{"resources/list", false, false, ClassList},
		{"resources/templates/list", false, false, ClassList},
		{"prompts/list", false, false, ClassList},
		{"completion/complete", false, false, ClassList},
		{"logging/setLevel", false, false, ClassList},
		{"resources/subscribe", false, false, ClassList},
		{"resources/unsubscribe", false, false, ClassList},
		{"roots/list", false, false, ClassList},
		{"tasks/get", false, false, ClassList},
		{"tasks/list", false, false, ClassList},
		{"tasks/cancel", false, false, ClassList},
		{"tools/call", false, false, ClassHeavy},
		{"resources/read", false, false, ClassHeavy},
		{"prompts/get", false, false, ClassHeavy},
		{"sampling/createMessage", false, false, ClassHeavy},
		{"elicitation/create", false, false, ClassHeavy},
		{"tasks/result", false, false, ClassHeavy},
		{"vendor/somethingNew", false, false, ClassHeavy},
		{"", false, false, ClassHeavy},
		{"notifications/", false, false, ClassCheap},
		{"Tools/List", false, false, ClassHeavy},
	}
	for _, tt := range tests {
		if got := ClassOf(tt.method, tt.isResponse, tt.isNotification); got != tt.want {
			t.Errorf("ClassOf(%q, %v, %v) = %v, want %v", tt.method, tt.isResponse, tt.isNotification, got, tt.want)
		}
	}
}

func TestClassOfAllocs(t *testing.T) {
	methods := []string{"tools/call", "tools/list", "ping", "notifications/x", "unknown/method"}
	allocs := testing.AllocsPerRun(100, func() {
		for _, m := range methods {
			_ = ClassOf(m, false, false)
		}
	})
	if allocs != 0 {
		t.Fatalf("ClassOf allocates %v times per run", allocs)
	}
}

func TestPriorityOrder(t *testing.T) {
	// Highest first, as documented.
	order := []struct {
		c         Class
		inSession bool
		want      Priority
		name      string
	}{
		{ClassCheap, true, PriorityCheapSession, "cheap_session"},
		{ClassList, true, PriorityListSession, "list_session"},
		{ClassHeavy, true, PriorityHeavySession, "heavy_session"},
		{ClassCheap, false, PriorityCheapNew, "cheap_new"},
		{ClassList, false, PriorityListNew, "list_new"},
		{ClassHeavy, false, PriorityHeavyNew, "heavy_new"},
	}
	for i, o := range order {
		p := PriorityOf(o.c, o.inSession)
		if p != o.want {
			t.Errorf("PriorityOf(%v, %v) = %v, want %v", o.c, o.inSession, p, o.want)
		}
		if p >= NumPriorities {
			t.Errorf("%v out of range", p)
		}
		if p.Class() != o.c || p.InSession() != o.inSession {
			t.Errorf("%v: Class() = %v, InSession() = %v", p, p.Class(), p.InSession())
		}
		if p.String() != o.name {
			t.Errorf("%v.String() = %q, want %q", uint8(p), p.String(), o.name)
		}
		if i > 0 && !(p < order[i-1].want) {
			t.Errorf("%v is not below %v", p, order[i-1].want)
		}
	}
	if got := PriorityOf(Class(200), true); got != PriorityHeavySession {
		t.Errorf("PriorityOf(out of range, true) = %v", got)
	}
	if Priority(NumPriorities).String() != "unknown" || Class(NumClasses).String() != "unknown" {
		t.Error("out-of-range String is not unknown")
	}
	if Priority(NumPriorities).InSession() || Priority(NumPriorities).Class() != ClassHeavy {
		t.Error("out-of-range priority helpers")
	}
}

func TestClassString(t *testing.T) {
	for c, want := range map[Class]string{ClassCheap: "cheap", ClassList: "list", ClassHeavy: "heavy"} {
		if c.String() != want {
			t.Errorf("%d.String() = %q, want %q", c, c.String(), want)
		}
	}
}

func BenchmarkClassOf(b *testing.B) {
	methods := []string{"tools/call", "tools/list", "ping", "notifications/progress", "vendor/x"}
	for i := 0; b.Loop(); i++ {
		_ = ClassOf(methods[i%len(methods)], false, false)
	}
}
