//go:build fakeclock

package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseClockSpec(t *testing.T) {
	for _, tc := range []struct {
		text string
		want clockSpec
		err  string
	}{
		{"", clockSpec{}, ""},
		{"offset 1h\n", clockSpec{offset: time.Hour}, ""},
		{"offset -1h", clockSpec{offset: -time.Hour}, ""},
		{"strobe 1h 100ms", clockSpec{offset: time.Hour, period: 100 * time.Millisecond}, ""},
		{"offset soon", clockSpec{}, `offset "soon"`},
		{"strobe 1h 0s", clockSpec{}, "strobe period"},
		{"jump 1h", clockSpec{}, `want "offset <duration>"`},
	} {
		got, err := parseClockSpec(tc.text)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want an error with %q", tc.text, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q = %+v, %v; want %+v", tc.text, got, err, tc.want)
		}
	}
	s := clockSpec{offset: time.Hour, period: time.Second}
	if s.at(time.Unix(0, 0)) != time.Hour || s.at(time.Unix(1, 0)) != -time.Hour {
		t.Errorf("strobe does not alternate each period")
	}
}
