package jepsen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// The disk-full fault: with CaseConfig.SmallDisks every node's data dir is
// a size-limited tmpfs from the start of the case (the data dir cannot be
// moved under a running node, and which node is a follower is known only
// when the fault strikes). The disk-full-follower and disk-full-leader
// nemeses fill a follower's or the leader's file system under load with a
// filler file until ENOSPC and keep it full, then give the space back:
// freed (the filler removed) and grown (the tmpfs remounted larger) on
// alternate injections.
//
// raft-wal preallocates each segment file when it starts it, so appends
// inside a segment never meet the full disk: only the end of one does
// (the sealing batch writes past the preallocated size, then the next
// segment is preallocated). The nodes of a small-disk case therefore run
// with segments of smallDiskSegmentSize, and the follower reaches the end
// of its segment, and is refused, within seconds of load while its disk
// is full.

const (
	smallDiskSize   = 128 << 20 // per node; a short case's data dir uses about 1 MiB
	smallDiskGrowth = 64 << 20  // added by a "grown" heal
	tmpfsMagic      = 0x01021994
	// catchUpBound is how long a freed follower may take to apply the
	// leader's commit index. raft backs off after each refused append, up
	// to about 10 s between tries.
	catchUpBound = 20 * time.Second
	// smallDiskSegmentSize is --wal-segment-size on the nodes of a
	// small-disk case: raft-wal's smallest segment that quorumq accepts.
	smallDiskSegmentSize = "1MiB"
)

// smallDiskNemesis is implemented by nemeses that need every data dir on a
// small file system of its own (CaseConfig.SmallDisks).
type smallDiskNemesis interface {
	NeedsSmallDisks() bool
}

// needsSmallDisks reports whether nemesis n needs CaseConfig.SmallDisks.
func needsSmallDisks(n Nemesis) bool {
	s, ok := n.(smallDiskNemesis)
	return ok && s.NeedsSmallDisks()
}

// SmallDisksAvailable returns why size-limited data dirs cannot be
// mounted on this machine, or nil.
func SmallDisksAvailable() error {
	if os.Geteuid() != 0 {
		return errors.New("small disks: mounting a size-limited tmpfs under a data dir needs root")
	}
	dir, err := os.MkdirTemp("", "quorumq-jepsen-tmpfs-probe-")
	if err != nil {
		return fmt.Errorf("small disks: %w", err)
	}
	defer os.Remove(dir)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		return fmt.Errorf("small disks: mount tmpfs on %s: %w (needs CAP_SYS_ADMIN)", dir, err)
	}
	return syscall.Unmount(dir, 0)
}

// mountSmallDisks mounts a tmpfs of smallDiskSize on dataDir/<id> for
// every id. The returned unmount must run after every node using them is
// dead; it is safe to call more than once.
func mountSmallDisks(dataDir string, ids []string) (unmount func() error, err error) {
	var mounted []string
	unmount = func() error {
		var errs []error
		for _, dir := range mounted {
			if err := syscall.Unmount(dir, 0); err != nil && !errors.Is(err, syscall.EINVAL) {
				// Detach it anyway so the data dir can be removed; the
				// kernel finishes the unmount once the mount is idle.
				syscall.Unmount(dir, syscall.MNT_DETACH)
				errs = append(errs, fmt.Errorf("unmount the tmpfs on %s: %w", dir, err))
			}
		}
		mounted = nil
		return errors.Join(errs...)
	}
	for _, id := range ids {
		dir := filepath.Join(dataDir, id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, errors.Join(err, unmount())
		}
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", smallDiskSize)); err != nil {
			return nil, errors.Join(fmt.Errorf("mount a %d MiB tmpfs on %s: %w", smallDiskSize>>20, dir, err), unmount())
		}
		mounted = append(mounted, dir)
	}
	return unmount, nil
}

// smallDisk checks that dir is a tmpfs (a data dir of a SmallDisks case)
// and returns its size.
func smallDisk(nemesis, dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	if st.Type != tmpfsMagic {
		return 0, fmt.Errorf("%s: %s is not on its own tmpfs; the case needs CaseConfig.SmallDisks", nemesis, dir)
	}
	return int64(st.Blocks) * st.Bsize, nil
}

// fillDisk appends zeros to path until the file system says ENOSPC and
// returns how many bytes it added; create makes the file if it does not
// exist. The file is opened for each call, so no descriptor stays open on
// the data dir between calls.
func fillDisk(path string, create bool) (int64, error) {
	flags := os.O_WRONLY | os.O_APPEND
	if create {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var total int64
	buf := make([]byte, 1<<20)
	for chunk := len(buf); chunk >= 4096; {
		n, err := f.Write(buf[:chunk])
		total += int64(n)
		switch {
		case errors.Is(err, syscall.ENOSPC):
			chunk /= 2 // the last pages
		case err != nil:
			return total, err
		}
	}
	return total, nil
}

// growDisk remounts the tmpfs on dir with by more bytes and returns the
// new size.
func growDisk(dir string, by int64) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	size := int64(st.Blocks)*st.Bsize + by
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_REMOUNT, fmt.Sprintf("size=%d", size)); err != nil {
		return 0, fmt.Errorf("grow the tmpfs on %s to %d bytes: %w", dir, size, err)
	}
	return size, nil
}

// keepFull tops the filler up every 100 ms (the node frees space when a
// snapshot it could not write is cleaned up) until the returned stop is
// called or a top-up fails for another reason than a full disk. A top-up
// never creates the file: once the tmpfs is unmounted the path is gone,
// and the top-ups end instead of filling the disk beneath.
func keepFull(path string) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := fillDisk(path, false); err != nil {
				return
			}
		}
	}()
	return func() {
		select {
		case <-quit:
		default:
			close(quit)
		}
		<-done
	}
}

// diskFill is what the disk-full nemeses share: one victim's file system
// filled under load and kept full until heal, then its space given back,
// and the victim's log read for the writes the full disk refused.
type diskFill struct {
	count     int // injections so far; the odd ones free the space, the even ones grow the disk
	victim    *Node
	fillers   []string
	logOffset int64
	stopFill  func()
}

func (*diskFill) NeedsNetwork() bool    { return false }
func (*diskFill) NeedsLazyFS() bool     { return false }
func (*diskFill) NeedsSmallDisks() bool { return true }

// fill fills n's file system with a new filler until ENOSPC and keeps it
// full; who names n in the description it returns.
func (d *diskFill) fill(nemesis string, n *Node, who string) (string, error) {
	size, err := smallDisk(nemesis, n.DataDir)
	if err != nil {
		return "", err
	}
	if st, err := os.Stat(n.LogPath); err == nil {
		d.logOffset = st.Size()
	}
	path := filepath.Join(n.DataDir, fmt.Sprintf("jepsen-filler-%d", d.count))
	d.count++
	filled, err := fillDisk(path, true)
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("fill %s's disk: %w", n.ID, err)
	}
	d.victim = n
	d.fillers = append(d.fillers, path)
	d.stopFill = keepFull(path)
	return fmt.Sprintf("filled the %d MiB disk of %s: %s of filler until ENOSPC, kept full", size>>20, who, mib(filled)), nil
}

// giveBack stops the top-ups and gives the victim's space back: the
// fillers removed on odd injections, the tmpfs grown by smallDiskGrowth
// (fillers kept) on even ones. It returns the victim, nil when no fault
// is in force, and what it did.
func (d *diskFill) giveBack() (*Node, string, error) {
	n := d.victim
	if n == nil {
		return nil, "", nil
	}
	d.victim = nil
	d.stopFill()
	if d.count%2 == 1 {
		for _, f := range d.fillers {
			if err := os.Remove(f); err != nil {
				return n, "", fmt.Errorf("free %s's disk: %w", n.ID, err)
			}
		}
		d.fillers = nil
		return n, fmt.Sprintf("freed %s's disk (fillers removed)", n.ID), nil
	}
	size, err := growDisk(n.DataDir, smallDiskGrowth)
	if err != nil {
		return n, "", err
	}
	return n, fmt.Sprintf("grew %s's disk to %d MiB (fillers kept)", n.ID, size>>20), nil
}

// account adds to what (a heal's description) how many writes n's full
// disk refused, and restarts n if it exited while full: raft stops a node
// that cannot save a new term, and an operator's supervisor would restart
// it once there is space again.
func (d *diskFill) account(env *Env, n *Node, what string) (desc string, refusals, logs int, err error) {
	refusals, _, logs = d.refusals(n)
	desc = fmt.Sprintf("%s; %d lines of its log say no space left on device, %d of them refused log appends", what, refusals, logs)
	if !n.Proc.Running() {
		if err := env.Cluster.Restart(n, false); err != nil {
			return desc, refusals, logs, err
		}
		desc += "; it had exited while full, restarted"
	}
	return desc, refusals, logs, nil
}

// logAppendRefusals are the lines raft logs when the log store refuses an
// append: on a follower ("failed to append to logs") and on the leader
// ("failed to commit logs", after which it steps down). With "no space
// left on device" in it, a full disk refused a log write, not only a
// snapshot.
var logAppendRefusals = []string{"failed to append to logs", "failed to commit logs"}

// refusals counts the lines n logged since the injection that report a
// full disk, and returns the first one; logs counts those among them
// that refused a log append.
func (d *diskFill) refusals(n *Node) (count int, first string, logs int) {
	f, err := os.Open(n.LogPath)
	if err != nil {
		return 0, "", 0
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, d.logOffset, 1<<40))
	if err != nil {
		return 0, "", 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, "no space left on device") {
			continue
		}
		if count == 0 {
			first = line
		}
		count++
		for _, m := range logAppendRefusals {
			if strings.Contains(line, m) {
				logs++
				break
			}
		}
	}
	return count, first, logs
}

// diskFullFollower fills the disk of a random follower, under load, and
// keeps it full until heal. Inject returns once the node has refused a
// log append (raft logs "failed to append to logs" with "no space left on
// device"): it goes on for seconds inside its preallocated wal segment
// (or on free pages inside its bolt file), refusing snapshots meanwhile.
// Heal gives the space back (diskFill.giveBack), and then requires that
// the node refused log appends while full (the fault bit) and that it
// applies the leader's commit index within catchUpBound.
type diskFullFollower struct {
	diskFill
	firstRefusal time.Time // of any write, in the current injection
}

func (d *diskFullFollower) Name() string { return "disk-full-follower" }

func (d *diskFullFollower) Inject(ctx context.Context, env *Env) (string, error) {
	leader, err := env.Cluster.WaitLeader(ctx)
	if err != nil {
		return "", err
	}
	var followers []*Node
	for _, n := range env.Cluster.Nodes {
		if n != leader {
			followers = append(followers, n)
		}
	}
	n := followers[env.Rand.IntN(len(followers))]
	detail, err := d.fill(d.Name(), n, fmt.Sprintf("follower %s (leader %s)", n.ID, leader.ID))
	if err != nil {
		return "", err
	}
	d.firstRefusal = time.Time{}
	// The node goes on appending into its preallocated wal segment (or
	// on the free pages inside its bolt file) until it needs a new one;
	// the fault is in force once it refuses a log append.
	start := time.Now()
	for {
		count, first, logs := d.refusals(n)
		if count > 0 && d.firstRefusal.IsZero() {
			d.firstRefusal = time.Now()
		}
		if logs > 0 {
			return fmt.Sprintf("%s; first refusal after %s, first log append refused after %s: %.300s",
				detail, d.firstRefusal.Sub(start).Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond), first), nil
		}
		select {
		case <-ctx.Done():
			return detail, fmt.Errorf("%s's disk is full but it refused no log append (%d other writes refused): %w", n.ID, count, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *diskFullFollower) Heal(ctx context.Context, env *Env) (string, error) {
	n, what, err := d.giveBack()
	if n == nil || err != nil {
		return what, err
	}
	return d.verify(ctx, env, n, what)
}

// verify is the end of a heal: node n, whose disk was full, must have
// refused writes (else the fault did not bite) and must catch up.
func (d *diskFullFollower) verify(ctx context.Context, env *Env, n *Node, what string) (string, error) {
	desc, refusals, logs, err := d.account(env, n, what)
	if err != nil {
		return desc, err
	}
	if refusals == 0 {
		return desc, fmt.Errorf("%s refused no write while its disk was full: the fault did not bite", n.ID)
	}
	if logs == 0 {
		return desc, fmt.Errorf("%s refused no log append while its disk was full, only other writes: the full disk never met the log", n.ID)
	}
	caught, err := waitCaughtUp(ctx, env.Cluster, n, catchUpBound)
	if err != nil {
		return desc, err
	}
	return desc + "; " + caught, nil
}

// diskGuardProbeQueue is the queue the disk-full-leader nemesis asks its
// victim to create: a call its disk guard must refuse while the disk is
// full. One the guard lets through creates the queue once, or is told
// it exists; either way no workload's queue changes.
const diskGuardProbeQueue = "jepsen-disk-guard-probe"

const (
	// guardBound is how long a leader with a full disk may go on
	// admitting the probe: its guard decides on a free-space reading at
	// most 250 ms old (cluster/diskguard.go).
	guardBound = 2 * time.Second
	// appliesBound is how long the cluster may apply nothing while the
	// leader's disk is full; a leader proposes a tick every second, and an
	// election after it stepped down takes a few.
	appliesBound = 8 * time.Second
)

// diskFullLeader fills the leader's disk, under load, and keeps it full
// until heal. The leader's disk guard must then refuse what adds data
// before proposing it: Inject returns once the node has refused a probe
// (CreateQueue of diskGuardProbeQueue) with the guard's
// ResourceExhausted, or once it no longer leads (its own log append met
// the full disk first, and raft stepped it down); a node that leads on
// and admits the probe for guardBound fails the injection. Heal first
// requires, the disk still full, that the cluster applies entries within
// appliesBound (led by the node, which goes on serving receives, acks
// and ticks from its preallocated wal segment, or by another one), then
// gives the space back like diskFullFollower and requires that the full
// disk refused something (the probe, or a write in the node's log) and
// that the node applies the leader's commit index within catchUpBound.
type diskFullLeader struct {
	diskFill
	guardRefusal string // the guard's answer to the probe in the current injection
}

func (d *diskFullLeader) Name() string { return "disk-full-leader" }

func (d *diskFullLeader) Inject(ctx context.Context, env *Env) (string, error) {
	n, err := env.Cluster.WaitLeader(ctx)
	if err != nil {
		return "", err
	}
	detail, err := d.fill(d.Name(), n, "leader "+n.ID)
	if err != nil {
		return "", err
	}
	d.guardRefusal = ""
	start := time.Now()
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := quorumqpb.NewQueueClient(n.Conn()).CreateQueue(pctx, &quorumqpb.CreateQueueRequest{Name: diskGuardProbeQueue})
		cancel()
		after := time.Since(start).Round(10 * time.Millisecond)
		if st, _ := status.FromError(err); st.Code() == codes.ResourceExhausted && strings.Contains(st.Message(), "disk guard") {
			d.guardRefusal = st.Message()
			return fmt.Sprintf("%s; its disk guard refused the probe after %s: %.300s", detail, after, st.Message()), nil
		}
		if !n.Proc.Running() {
			return fmt.Sprintf("%s; it exited %s after the fill, before its guard refused the probe", detail, after), nil
		}
		if _, _, notLeader := wire.LeaderHint(err); notLeader {
			return fmt.Sprintf("%s; it stopped leading %s after the fill, before its guard refused the probe", detail, after), nil
		}
		if time.Since(start) > guardBound {
			return detail, fmt.Errorf("%s leads with a full disk, but its disk guard did not refuse the probe for %s (last answer: %v)", n.ID, guardBound, err)
		}
		select {
		case <-ctx.Done():
			return detail, fmt.Errorf("waiting for %s's disk guard to refuse the probe: %w", n.ID, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (d *diskFullLeader) Heal(ctx context.Context, env *Env) (string, error) {
	if d.victim == nil {
		return "", nil
	}
	applies, appliesErr := keepsApplying(ctx, env.Cluster, d.victim, appliesBound)
	n, what, err := d.giveBack()
	if err != nil {
		return applies, err
	}
	if applies != "" {
		what = applies + "; " + what
	}
	desc, refusals, _, err := d.account(env, n, what)
	switch {
	case err != nil:
		return desc, err
	case appliesErr != nil:
		return desc, appliesErr
	case d.guardRefusal == "" && refusals == 0:
		return desc, fmt.Errorf("%s's disk guard refused no probe and its log shows no write refused while its disk was full: the fault did not bite", n.ID)
	}
	caught, err := waitCaughtUp(ctx, env.Cluster, n, catchUpBound)
	if err != nil {
		return desc, err
	}
	return desc + "; " + caught, nil
}

// keepsApplying waits, for at most bound, until the cluster's leader
// applies an entry beyond the applied index of the leader it finds first,
// and says which node led: full, whose disk is full, or another.
func keepsApplying(ctx context.Context, c *Cluster, full *Node, bound time.Duration) (string, error) {
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	var base uint64
	known := false
	for {
		if l, err := c.Leader(cctx); err == nil {
			sctx, scancel := context.WithTimeout(cctx, time.Second)
			st, err := c.NodeStatus(sctx, l)
			scancel()
			switch {
			case err != nil:
			case !known:
				base, known = st.GetAppliedIndex(), true
			case st.GetAppliedIndex() > base:
				who := "it still led"
				if l != full {
					who = l.ID + " led in its place"
				}
				return fmt.Sprintf("with %s's disk full %s and applied index %d after %d within %s",
					full.ID, who, st.GetAppliedIndex(), base, time.Since(start).Round(100*time.Millisecond)), nil
			}
		}
		select {
		case <-cctx.Done():
			if !known {
				return "", fmt.Errorf("with %s's disk full no node led for %s", full.ID, bound)
			}
			return "", fmt.Errorf("with %s's disk full the cluster applied nothing beyond index %d for %s", full.ID, base, bound)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitCaughtUp waits until n has applied the leader's commit index as it
// was when the wait began, and says how long that took.
func waitCaughtUp(ctx context.Context, c *Cluster, n *Node, bound time.Duration) (string, error) {
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	leader, err := c.WaitLeader(cctx)
	if err != nil {
		return "", err
	}
	lst, err := c.NodeStatus(cctx, leader)
	if err != nil {
		return "", fmt.Errorf("status of leader %s: %w", leader.ID, err)
	}
	target := lst.GetCommitIndex()
	var applied uint64
	for {
		sctx, scancel := context.WithTimeout(cctx, time.Second)
		st, err := c.NodeStatus(sctx, n)
		scancel()
		if err == nil {
			applied = st.GetAppliedIndex()
			if applied >= target {
				return fmt.Sprintf("caught up with the leader's commit index %d within %s", target, time.Since(start).Round(100*time.Millisecond)), nil
			}
		}
		select {
		case <-cctx.Done():
			return "", fmt.Errorf("%s did not catch up: applied index %d, %s after the heal began; leader %s's commit index was %d then", n.ID, applied, bound, leader.ID, target)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
