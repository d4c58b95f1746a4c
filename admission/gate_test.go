package admission

import "testing"

func TestLevelAdmits(t *testing.T) {
	for _, tt := range []struct {
		level            Level
		finishing, opens bool
		want             bool
	}{
		{LevelFull, false, true, true},
		{LevelDegraded, false, true, true},
		{LevelEssential, false, false, true},
		{LevelEssential, false, true, false},
		{LevelEssential, true, false, true},
		{LevelProtective, false, false, false},
		{LevelProtective, true, false, true},
		{LevelProtective, false, true, false},
	} {
		if ok, why := tt.level.Admits(tt.finishing, tt.opens); ok != tt.want || ok == (why != "") {
			t.Errorf("%v finishing %v opens %v: %v %q", tt.level, tt.finishing, tt.opens, ok, why)
		}
	}
}
