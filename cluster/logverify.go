package cluster

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	walmetrics "github.com/hashicorp/raft-wal/metrics"
	"github.com/hashicorp/raft-wal/verifier"

	"github.com/quorumq/quorumq/fsm"
)

// Online verification of the log store, as Consul runs it, with
// raft-wal's verifier package. The start-up checks (datacheck.go,
// walcheck.go) see a log only when a node starts; this sees it while the
// node runs, on both stores.
//
//   - The leader appends a checkpoint entry every Config.LogVerifyInterval
//     (a LogCommand whose Data is fsm.CheckpointData(); every FSM passes
//     over it, so it changes no state, and it is written only once every
//     voter gossips featureLogCheckpoint).
//   - Every node's log store is wrapped in verifier.LogStore, beneath the
//     read checks and the cache, so that what it reads back comes from the
//     store itself. It keeps a running checksum of the entries it writes.
//     On the leader it records, in the checkpoint's Extensions, the range
//     since the previous checkpoint and the leader's checksum of it; raft
//     replicates the entry with them.
//   - When a node (the leader too) has written a checkpoint, the verifier
//     compares, in the background: its own checksum as written with the
//     leader's (a difference is in-flight corruption: the entries changed
//     between the leader's store and this one), then the range read back
//     from its store with the leader's (storage corruption: what the disk
//     returns is not what was written).
//
// A mismatch is logged as an error naming the range and the file that
// holds its first entry, counted (quorumq_log_verifier_*_total) and shown
// by quorumq status. The node keeps running: the read checks still stop
// it before it applies or sends a corrupt command, and the operator
// replaces it (docs/operations.md).

// defaultLogVerifyInterval is Config.LogVerifyInterval's default.
const defaultLogVerifyInterval = 60 * time.Second

// featureLogCheckpoint: the log holds checkpoint entries. A server of an
// older release would apply one as a malformed command (an error result
// that changes nothing, but a refusal in its log at every checkpoint).
const featureLogCheckpoint = "log-checkpoint"

// logVerification is a node's verifier and what it has found.
type logVerification struct {
	store   *verifyingStore
	metrics *walmetrics.AtomicCollector
	fileOf  func(index uint64) string

	mu      sync.Mutex
	lastErr string // the latest mismatch

	onReport func(verifier.VerificationReport) // tests: sees every report after it is handled
}

// newLogVerification wraps disk, the node's log store, in a verifier.
// fileOf names the file that holds an entry; what it finds is logged
// through logErr, logWarn and logDebug.
func newLogVerification(disk raft.LogStore, fileOf func(uint64) string, logErr, logWarn, logDebug func(string, ...any)) *logVerification {
	v := &logVerification{metrics: walmetrics.NewAtomicCollector(verifier.MetricDefinitions), fileOf: fileOf}
	base := verifiedStore{disk}
	v.store = &verifyingStore{base: base, renew: func() *verifier.LogStore {
		return verifier.NewLogStore(base, isCheckpoint, func(r verifier.VerificationReport) { v.report(r, logErr, logWarn, logDebug) }, v.metrics)
	}}
	v.store.cur.Store(v.store.renew())
	return v
}

// verifiedStore is the store under the verifier. It hides the store's
// Close, which verifier.LogStore.Close would otherwise call (the node
// closes its store itself), and passes IsMonotonic through.
type verifiedStore struct{ raft.LogStore }

// IsMonotonic implements raft.MonotonicLogStore.
func (s verifiedStore) IsMonotonic() bool { return monotonic(s.LogStore) }

// verifyingStore is the verifier over the node's store, started afresh
// whenever the end of the log is deleted. The verifier keeps a running
// checksum of what it writes and never takes deleted entries out of it,
// so a follower that replaces an old leader's uncommitted entries with
// the new leader's (raft deletes the conflicting suffix), or its whole
// log after a snapshot install, would report its next range as
// in-flight corruption though nothing is corrupt. A fresh verifier
// starts its checksum at the next entry it writes; its first range then
// starts elsewhere than the leader's, so the verifier skips the
// as-written comparison of that range and still reads it back.
//
// Only raft's main goroutine writes to the log and deletes its end;
// compaction deletes its head from another goroutine and never renews.
type verifyingStore struct {
	base  raft.LogStore
	renew func() *verifier.LogStore
	cur   atomic.Pointer[verifier.LogStore]
}

// FirstIndex implements raft.LogStore.
func (s *verifyingStore) FirstIndex() (uint64, error) { return s.cur.Load().FirstIndex() }

// LastIndex implements raft.LogStore.
func (s *verifyingStore) LastIndex() (uint64, error) { return s.cur.Load().LastIndex() }

// GetLog implements raft.LogStore.
func (s *verifyingStore) GetLog(index uint64, log *raft.Log) error {
	return s.cur.Load().GetLog(index, log)
}

// StoreLog implements raft.LogStore.
func (s *verifyingStore) StoreLog(log *raft.Log) error { return s.cur.Load().StoreLog(log) }

// StoreLogs implements raft.LogStore.
func (s *verifyingStore) StoreLogs(logs []*raft.Log) error { return s.cur.Load().StoreLogs(logs) }

// DeleteRange implements raft.LogStore; deleting the last entry starts
// a fresh verifier.
func (s *verifyingStore) DeleteRange(lo, hi uint64) error {
	last, err := s.base.LastIndex()
	if err != nil {
		return err
	}
	if err := s.cur.Load().DeleteRange(lo, hi); err != nil {
		return err
	}
	if hi >= last {
		s.cur.Swap(s.renew()).Close() // a report it has queued is still made
	}
	return nil
}

// IsMonotonic implements raft.MonotonicLogStore.
func (s *verifyingStore) IsMonotonic() bool { return monotonic(s.base) }

// Close ends the current verifier's background reader. Nothing may be
// stored after it.
func (s *verifyingStore) Close() { s.cur.Load().Close() }

func isCheckpoint(l *raft.Log) (bool, error) {
	return l.Type == raft.LogCommand && fsm.IsCheckpoint(l.Data), nil
}

// report is the verifier's ReportFn: it runs once per checkpoint, after
// the range was compared.
func (v *logVerification) report(r verifier.VerificationReport, logErr, logWarn, logDebug func(string, ...any)) {
	if r.SkippedRange != nil {
		logWarn("log verification skipped a range: the previous one was still being read; lengthen the checkpoint interval",
			"skipped", r.SkippedRange.String())
	}
	var mismatch verifier.ErrChecksumMismatch
	switch {
	case r.Err == nil:
		logDebug("log range verified", "range", r.Range.String(), "as_written", r.WrittenSum != 0, "elapsed", r.Elapsed)
	case errors.Is(r.Err, verifier.ErrRangeMismatch):
		// This node does not hold the whole range (it joined or
		// compacted its log within it): there is nothing to compare.
		logDebug("log range not verified: this node does not hold all of it", "range", r.Range.String())
	case errors.As(r.Err, &mismatch):
		logErr("log verification failed: this node's log differs from what the leader wrote; replace the node (docs/operations.md)",
			"range", r.Range.String(), "file", v.fileOf(r.Range.Start), "err", r.Err)
		v.mu.Lock()
		v.lastErr = r.Err.Error()
		v.mu.Unlock()
	default:
		logWarn("a log range could not be verified", "range", r.Range.String(), "err", r.Err)
	}
	if v.onReport != nil {
		v.onReport(r)
	}
}

// counts returns the ranges verified and the read (storage) and write
// (in-flight) mismatches found since the node started, and the latest
// mismatch.
func (v *logVerification) counts() (ranges, reads, writes uint64, last string) {
	c := v.metrics.Summary().Counters
	v.mu.Lock()
	defer v.mu.Unlock()
	return c["ranges_verified"], c["read_checksum_failures"], c["write_checksum_failures"], v.lastErr
}

// appendCheckpoint has the leader append a checkpoint entry and waits
// until it is applied.
func (n *Node) appendCheckpoint(ctx context.Context) error {
	return n.await(ctx, n.raft.Apply(fsm.CheckpointData(), n.cfg.ApplyTimeout), n.cfg.ApplyTimeout)
}

// checkpoints ticks every Config.LogVerifyInterval while the node leads
// (never when it is negative: verification off); stop releases it.
func (n *Node) checkpoints() (tick <-chan time.Time, stop func()) {
	if n.cfg.LogVerifyInterval < 0 {
		return nil, func() {}
	}
	t := time.NewTicker(n.cfg.LogVerifyInterval)
	return t.C, t.Stop
}

// checkpoint is the leader's periodic checkpoint, once every voter knows
// the entry.
func (n *Node) checkpoint(ctx context.Context) {
	if !n.clusterHas(featureLogCheckpoint) {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
	defer cancel()
	if err := n.appendCheckpoint(cctx); err != nil && ctx.Err() == nil {
		n.log.Debug("log checkpoint not applied", "err", err)
	}
}
