//go:build !fakeclock

package main

import (
	"context"
	"strings"
	"testing"

	"github.com/quorumq/quorumq/cluster"
)

// A release build refuses the fault suite's clock options by name.
func TestReleaseBuildRefusesFakeClock(t *testing.T) {
	for _, f := range []serverFlags{{fakeClockFile: "/tmp/clock"}, {wallClockStamps: true}} {
		err := f.fakeClock(context.Background(), &cluster.Config{})
		if err == nil || !strings.Contains(err.Error(), "built without -tags fakeclock") {
			t.Errorf("%+v: %v, want a refusal naming -tags fakeclock", f, err)
		}
	}
	if err := (&serverFlags{}).fakeClock(context.Background(), &cluster.Config{}); err != nil {
		t.Errorf("no clock options: %v", err)
	}
}
