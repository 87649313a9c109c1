package jepsen

import (
	"slices"
	"testing"
)

// The redrive checker accepts every dead letter exactly once in the DLQ
// or the target, and rejects a history where one is in both, one is in
// neither, one is twice in the target or one was never a dead letter.
func TestCheckRedrive(t *testing.T) {
	dead := []string{"a", "b", "c", "d"}
	if r := CheckRedrive(dead, []string{"d"}, []string{"a", "b", "c"}); !r.Valid {
		t.Fatalf("a correct redrive was rejected: %v", r.Problems)
	}
	for _, c := range []struct {
		name        string
		dlq, target []string
		field       func(RedriveCheck) []string
		want        string
	}{
		{"in both", []string{"c", "d"}, []string{"a", "b", "c"}, func(r RedriveCheck) []string { return r.InBoth }, "c"},
		{"in neither", []string{"d"}, []string{"a", "b"}, func(r RedriveCheck) []string { return r.Lost }, "c"},
		{"twice in the target", []string{"d"}, []string{"a", "b", "c", "a"}, func(r RedriveCheck) []string { return r.Duplicated }, "a"},
		{"never a dead letter", []string{"d"}, []string{"a", "b", "c", "z"}, func(r RedriveCheck) []string { return r.Unexpected }, "z"},
	} {
		r := CheckRedrive(dead, c.dlq, c.target)
		if r.Valid || !slices.Equal(c.field(r), []string{c.want}) || len(r.Problems) != 1 {
			t.Errorf("%s: valid=%v, problems %v; want rejected naming %q", c.name, r.Valid, r.Problems, c.want)
		}
	}
}
