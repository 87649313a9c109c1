package cluster

import (
	"sync/atomic"
	"time"
)

// Clock is where a node reads time. Every read that ends up in cluster
// time (command stamps, long-poll due times, the clocks peers are told)
// goes through it, so tests and the fault suite can move one node's wall
// clock without touching the machine's.
type Clock interface {
	// Wall is the wall clock: it may jump forward or back (an NTP step,
	// an operator, a VM restored from a snapshot).
	Wall() time.Time
	// Mono is a monotonic reading: time elapsed since an arbitrary origin
	// fixed for the process. It never jumps; only differences mean
	// anything.
	Mono() time.Duration
}

// monoOrigin is the origin of SystemClock's monotonic readings.
var monoOrigin = time.Now()

// SystemClock is the machine's clock.
type SystemClock struct{}

// Wall returns time.Now without its monotonic reading.
func (SystemClock) Wall() time.Time { return time.Now().Round(0) }

// Mono returns the monotonic time since the process started.
func (SystemClock) Mono() time.Duration { return time.Since(monoOrigin) }

// OffsetClock is the system clock with a wall-clock offset that can be
// changed at any time: a clock stepped by an operator, wrong by an hour,
// or strobing. Its monotonic reading is the system's, as a monotonic
// clock is unaffected by steps of the wall clock.
type OffsetClock struct {
	offset atomic.Int64 // ns
}

// Wall returns the system wall clock plus the offset.
func (c *OffsetClock) Wall() time.Time {
	return SystemClock{}.Wall().Add(time.Duration(c.offset.Load()))
}

// Mono returns the system's monotonic reading.
func (c *OffsetClock) Mono() time.Duration { return SystemClock{}.Mono() }

// Set makes the wall clock read d ahead of the system's (behind when d is
// negative).
func (c *OffsetClock) Set(d time.Duration) { c.offset.Store(int64(d)) }

// Offset returns the current offset.
func (c *OffsetClock) Offset() time.Duration { return time.Duration(c.offset.Load()) }
