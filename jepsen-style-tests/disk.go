package jepsen

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
	"github.com/quorumq/quorumq/jepsen-style-tests/lazyfs"
)

// The disk faults: every node's data dir is a lazyfs mount (a FUSE file
// system that holds unsynced writes in memory), so a nemesis can cut a
// node's power, losing what it never fsynced, or corrupt its files while
// it is down. lazyfs/DESIGN.md says how lazyfs works and what it models.

// mountDisks mounts dataDir/<id>.backing on dataDir/<id> for every id.
// The returned unmount must run after every node using the mounts is dead.
func mountDisks(dataDir string, ids []string) (map[string]*lazyfs.FS, func() error, error) {
	disks := map[string]*lazyfs.FS{}
	unmount := func() error {
		var errs []error
		for id, fs := range disks {
			if err := fs.Unmount(); err != nil {
				// Detach it anyway so the data dir can be removed; the
				// kernel finishes the unmount once the mount is idle.
				syscall.Unmount(fs.Mountpoint(), syscall.MNT_DETACH)
				errs = append(errs, fmt.Errorf("unmount %s's data dir: %w", id, err))
			}
		}
		return errors.Join(errs...)
	}
	for _, id := range ids {
		backing, mnt := filepath.Join(dataDir, id+".backing"), filepath.Join(dataDir, id)
		for _, d := range []string{backing, mnt} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return nil, nil, errors.Join(err, unmount())
			}
		}
		fs, err := lazyfs.Mount(backing, mnt)
		if err != nil {
			return nil, nil, errors.Join(err, unmount())
		}
		disks[id] = fs
	}
	return disks, unmount, nil
}

// disk returns node n's lazyfs mount, or an error naming the nemesis when
// the case runs on plain directories.
func disk(env *Env, nemesis string, n *Node) (*lazyfs.FS, error) {
	if fs := env.Disks[n.ID]; fs != nil {
		return fs, nil
	}
	return nil, fmt.Errorf("%s: needs the data dirs on lazyfs mounts (CaseConfig.LazyFS)", nemesis)
}

// isSnapshotFile accepts the files raft's FileSnapshotStore writes.
func isSnapshotFile(rel string) bool {
	return strings.HasPrefix(rel, "snapshots"+string(filepath.Separator))
}

// cutPower kills victims at the same moment and drops (or tears) their
// unsynced writes, while they wait in an fsync if one comes within 3 s.
// With midSnapshot the first victim is asked for snapshots until one of
// its snapshot files is being fsynced, and its power fails right then.
// The victims stay down; restartAll brings them back.
func cutPower(ctx context.Context, env *Env, nemesis string, victims []*Node, mode lazyfs.Mode, midSnapshot bool) (string, error) {
	var targets []lazyfs.Target
	for _, n := range victims {
		fs, err := disk(env, nemesis, n)
		if err != nil {
			return "", err
		}
		targets = append(targets, lazyfs.Target{Name: n.ID, FS: fs, Kill: n.Proc.Kill, Start: func() error { return nil }})
	}
	var stopSnapshots func()
	if midSnapshot {
		targets[0].Hold = isSnapshotFile
		stopSnapshots = requestSnapshots(ctx, env.Cluster, victims[0])
	}
	losses, caught, err := lazyfs.PowerFailMidFsync(targets, mode, env.Rand, 3*time.Second)
	if stopSnapshots != nil {
		stopSnapshots()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "power failure (%s) of %s", mode, nodeIDs(victims))
	if midSnapshot {
		fmt.Fprintf(&b, ", %s asked for snapshots and held in the fsync of a snapshot file", victims[0].ID)
	}
	fmt.Fprintf(&b, "; cut mid-fsync: [%s]", strings.Join(caught, " "))
	for _, n := range victims {
		if l, ok := losses[n.ID]; ok {
			fmt.Fprintf(&b, "; %s: %d files had unsynced writes, %d B lost, %d B kept", n.ID, l.Files, l.Bytes, l.KeptBytes)
		}
	}
	return b.String(), err
}

// requestSnapshots asks n for a snapshot every 100 ms until the returned
// stop is called, so that a held snapshot fsync comes soon after the hold
// is armed, whenever that is.
func requestSnapshots(ctx context.Context, c *Cluster, n *Node) (stop func()) {
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for sctx.Err() == nil {
			rctx, rcancel := context.WithTimeout(sctx, 2*time.Second)
			c.Snapshot(rctx, n) // fails once the power is cut: expected
			rcancel()
			select {
			case <-sctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() { cancel(); <-done }
}

// powerMode alternates the modes and, independently, whether the power
// fails during a snapshot, so that any four consecutive injections of one
// nemesis cover the four combinations and any two cover both modes.
func powerMode(count int) (mode lazyfs.Mode, midSnapshot bool) {
	mode = lazyfs.Drop
	if count%2 == 1 {
		mode = lazyfs.Torn
	}
	return mode, (count+count/2)%2 == 1
}

// powerFailure cuts the power of the picked nodes at the same moment
// (mid-fsync) and restarts them, with what reached their disks, on heal.
type powerFailure struct {
	name    string
	pick    func(ctx context.Context, env *Env) ([]*Node, error)
	count   int
	victims []*Node
}

func (p *powerFailure) Name() string       { return p.name }
func (p *powerFailure) NeedsNetwork() bool { return false }
func (p *powerFailure) NeedsLazyFS() bool  { return true }

func (p *powerFailure) Inject(ctx context.Context, env *Env) (string, error) {
	ns, err := p.pick(ctx, env)
	if err != nil {
		return "", err
	}
	mode, midSnapshot := powerMode(p.count)
	p.count++
	p.victims = ns
	return cutPower(ctx, env, p.name, ns, mode, midSnapshot)
}

func (p *powerFailure) Heal(_ context.Context, env *Env) (string, error) {
	ns := p.victims
	p.victims = nil
	return restartAll(env, ns)
}

// partitionPower isolates the leader and cuts the power of either the
// isolated old leader (at once) or of the majority side (once it has
// elected a leader of its own and taken writes), alternately. The victims
// restart while the partition still holds, from what their disks kept,
// and only then is the partition healed.
type partitionPower struct {
	count   int
	victims []*Node
}

func (p *partitionPower) Name() string       { return "partition-power" }
func (p *partitionPower) NeedsNetwork() bool { return true }
func (p *partitionPower) NeedsLazyFS() bool  { return true }

func (p *partitionPower) Inject(ctx context.Context, env *Env) (string, error) {
	if env.Net == nil {
		return "", fmt.Errorf("%s: needs network namespaces", p.Name())
	}
	g, err := grudgeIsolateLeader(ctx, env)
	if err != nil {
		return "", err
	}
	if err := env.Net.Partition(g); err != nil {
		return "", err
	}
	var isolated *Node
	var majority []*Node
	for _, n := range env.Cluster.Nodes {
		if len(g[n.ID]) == len(env.Cluster.Nodes)-1 {
			isolated = n
		} else {
			majority = append(majority, n)
		}
	}
	// The old leader's power fails at once, while it may still append
	// writes it can no longer commit; the majority's once it has elected
	// a leader of its own and taken writes.
	victims, side := []*Node{isolated}, "at once, the isolated old leader"
	if p.count%2 == 1 {
		time.Sleep(2 * time.Second)
		victims, side = majority, "2 s later, the majority side"
	}
	mode, midSnapshot := powerMode(p.count)
	p.count++
	p.victims = victims
	detail, err := cutPower(ctx, env, p.Name(), victims, mode, midSnapshot)
	return describeGrudge(g) + "; then, " + side + ": " + detail, err
}

func (p *partitionPower) Heal(_ context.Context, env *Env) (string, error) {
	ns := p.victims
	p.victims = nil
	detail, err := restartAll(env, ns)
	if err != nil {
		return "", err
	}
	time.Sleep(2 * time.Second) // restarted from disk, still partitioned
	if env.Net != nil {
		if err := env.Net.Heal(); err != nil {
			return detail, err
		}
	}
	return detail + " while partitioned; 2 s later all drop rules removed", nil
}

// corruption damages one file of a stopped node's data dir, given as its
// backing directory, and returns what it did and the path of the damaged
// file relative to the data dir (the node must name it when it refuses to
// start).
type corruption func(backing string, env *Env) (what, rel string, err error)

// The node's Raft log store is raft-wal (wal/: segment files and the
// wal-meta.db bolt file) on a data dir the current release made, or
// raft-boltdb (raft.db) on one an earlier release made; each corruption
// damages whichever the node has.
const (
	boltFile    = "raft.db"
	walDir      = "wal"
	walMetaFile = "wal/wal-meta.db"
)

// walSegments returns the wal segment files of backing, oldest first
// (their names start with the first index they hold, zero-padded), or nil
// for a node on raft.db.
func walSegments(backing string) ([]string, error) {
	if _, err := os.Stat(filepath.Join(backing, boltFile)); err == nil {
		return nil, nil
	}
	segs, err := filepath.Glob(filepath.Join(backing, walDir, "*.wal"))
	if err != nil {
		return nil, err
	}
	if len(segs) == 0 {
		return nil, fmt.Errorf("neither %s nor a wal segment in %s", boltFile, backing)
	}
	sort.Strings(segs)
	return segs, nil
}

// corruptLogEntries flips a bit in every copy of the at-least-once
// producers' value prefix in the log store: every log entry still held
// that carries an enqueue of that workload fails its command checksum, and
// on the wal every batch holding one fails its commit checksum. A wal node
// names the oldest segment with a hit: it checks segments oldest first.
func corruptLogEntries(backing string, _ *Env) (string, string, error) {
	pattern := []byte("at-least-once-p")
	segs, err := walSegments(backing)
	if err != nil {
		return "", "", err
	}
	if segs == nil {
		offs, err := lazyfs.FlipBitsAt(filepath.Join(backing, boltFile), pattern)
		if err != nil {
			return "", "", err
		}
		return fmt.Sprintf("flipped a bit in %d copies of an at-least-once value in %s", len(offs), boltFile), boltFile, nil
	}
	var hit []string
	n := 0
	for _, seg := range segs {
		offs, err := lazyfs.FlipBitsAt(seg, pattern)
		if errors.Is(err, lazyfs.ErrPatternNotFound) {
			continue
		}
		if err != nil {
			return "", "", err
		}
		rel, _ := filepath.Rel(backing, seg)
		hit = append(hit, rel)
		n += len(offs)
	}
	if len(hit) == 0 {
		return "", "", fmt.Errorf("%w: %q in the wal segments of %s", lazyfs.ErrPatternNotFound, pattern, backing)
	}
	return fmt.Sprintf("flipped a bit in %d copies of an at-least-once value in %s", n, strings.Join(hit, ", ")), hit[0], nil
}

// truncateLog cuts raft.db, or the newest wal segment (the one being
// written), to between a quarter and a half of its size.
func truncateLog(backing string, env *Env) (string, string, error) {
	segs, err := walSegments(backing)
	if err != nil {
		return "", "", err
	}
	rel := boltFile
	if segs != nil {
		rel, _ = filepath.Rel(backing, segs[len(segs)-1])
	}
	return truncateFile(backing, rel, env)
}

// truncateLogMeta cuts the wal's meta DB (segment list, term and vote) to
// between a quarter and a half of its size; on a node on raft.db, which
// holds both its log and that metadata, it cuts raft.db. Random bit flips
// are not used on these bolt files: bbolt has no page checksums, and a
// flip in a page it does not use is harmless and rightly not refused.
func truncateLogMeta(backing string, env *Env) (string, string, error) {
	segs, err := walSegments(backing)
	if err != nil {
		return "", "", err
	}
	if segs == nil {
		return truncateFile(backing, boltFile, env)
	}
	return truncateFile(backing, walMetaFile, env)
}

// truncateFile cuts backing/rel to between a quarter and a half of its
// size.
func truncateFile(backing, rel string, env *Env) (string, string, error) {
	path := filepath.Join(backing, rel)
	st, err := os.Stat(path)
	if err != nil {
		return "", "", err
	}
	size := st.Size()/4 + env.Rand.Int64N(st.Size()/4+1)
	if err := lazyfs.Truncate(path, size); err != nil {
		return "", "", err
	}
	return fmt.Sprintf("truncated %s from %d to %d bytes", rel, st.Size(), size), rel, nil
}

// corruptSnapshot flips three random bits in the state.bin of a retained
// snapshot or in a segment file of the newest one (the node checks every
// one at start).
func corruptSnapshot(backing string, env *Env) (string, string, error) {
	files, _ := filepath.Glob(filepath.Join(backing, "snapshots", "*", "state.bin"))
	segs, _ := filepath.Glob(filepath.Join(backing, "snapshots", "*", "segs", "*"))
	for _, f := range segs {
		// Only a snapshot that keeps its checkpoint (store.tag) restores,
		// and only its segments are checked.
		if _, err := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(f)), "store.tag")); err == nil {
			files = append(files, f)
		}
	}
	var done []string
	for _, f := range files {
		if dir := filepath.Dir(f); !strings.HasSuffix(dir, ".tmp") && !strings.HasSuffix(filepath.Dir(dir), ".tmp") {
			done = append(done, f)
		}
	}
	if len(done) == 0 {
		return "", "", fmt.Errorf("no snapshot in %s", filepath.Join(backing, "snapshots"))
	}
	sort.Strings(done)
	victim := done[env.Rand.IntN(len(done))]
	offs, err := lazyfs.FlipRandomBits(victim, 3, env.Rand)
	if err != nil {
		return "", "", err
	}
	rel, _ := filepath.Rel(backing, victim)
	return fmt.Sprintf("flipped 3 random bits (offsets %v) in %s", offs, rel), rel, nil
}

// corruptNode stops a random node, corrupts one of its files (log entries
// in its log store, the log store truncated, a snapshot, or the log
// store's metadata truncated, in turn from a random start) and starts it:
// it must refuse to start naming the file. Heal is the operator's
// replacement procedure: remove it from the configuration, wipe its data
// dir, start it; it rejoins and catches up by snapshot.
type corruptNode struct {
	count, first int
	down         *Node
}

func (c *corruptNode) Name() string       { return "corrupt-node" }
func (c *corruptNode) NeedsNetwork() bool { return false }
func (c *corruptNode) NeedsLazyFS() bool  { return true }

var corruptions = []corruption{corruptLogEntries, truncateLog, corruptSnapshot, truncateLogMeta}

func (c *corruptNode) Inject(ctx context.Context, env *Env) (string, error) {
	n := env.Cluster.Nodes[env.Rand.IntN(len(env.Cluster.Nodes))]
	fs, err := disk(env, c.Name(), n)
	if err != nil {
		return "", err
	}
	if c.count == 0 {
		// Where the rotation starts is the seed's choice, so that short
		// runs with two injections meet every corruption over a few seeds.
		c.first = env.Rand.IntN(len(corruptions))
	}
	corrupt := corruptions[(c.first+c.count)%len(corruptions)]
	c.count++
	// A snapshot first, so that there is one to corrupt, and so that the
	// log is compacted and the rejoin after the wipe can be by snapshot.
	if err := env.Cluster.Snapshot(ctx, n); err != nil {
		return "", fmt.Errorf("snapshot on %s before corrupting it: %w", n.ID, err)
	}
	if err := n.Proc.Kill(); err != nil {
		return "", fmt.Errorf("kill -9 %s: %w", n.ID, err)
	}
	c.down = n
	// A power failure first, so the backing files hold everything the
	// node will read: the corruption is then what the disk hands back.
	if _, err := fs.PowerFailure(lazyfs.Drop, nil); err != nil {
		return "", fmt.Errorf("power failure of %s: %w", n.ID, err)
	}
	what, rel, err := corrupt(fs.Backing(), env)
	if err != nil {
		return "", fmt.Errorf("corrupt %s's data: %w", n.ID, err)
	}
	detail := n.ID + ": " + what
	if err := n.Proc.Start(); err != nil {
		return detail, err
	}
	if err := n.Proc.Wait(20 * time.Second); err == nil || n.Proc.Running() {
		return detail, fmt.Errorf("%s did not refuse its corrupt data dir (%s): exit %v", n.ID, what, err)
	}
	refusal, err := refusalNaming(n.LogPath, filepath.Join(n.DataDir, rel))
	return detail + "; start refused: " + refusal, err
}

// refusalNaming returns the line of the node's last incarnation that says
// its data dir is unusable, and an error unless that line names path.
func refusalNaming(logPath, path string) (string, error) {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return "", err
	}
	last := string(b)
	if i := strings.LastIndex(last, harness.StartMarker); i >= 0 {
		last = last[i:]
	}
	for _, line := range strings.Split(last, "\n") {
		if strings.Contains(line, "unusable data dir") {
			if !strings.Contains(line, path) {
				return line, fmt.Errorf("the refusal does not name %s", path)
			}
			return line, nil
		}
	}
	lines := strings.Split(strings.TrimSpace(last), "\n")
	return "", fmt.Errorf("the node exited without saying its data dir is unusable; its log ends with %q", lines[len(lines)-1])
}

func (c *corruptNode) Heal(ctx context.Context, env *Env) (string, error) {
	n := c.down
	if n == nil {
		return "", nil
	}
	c.down = nil
	n.Proc.Kill() // in case it did start
	if err := env.Cluster.RemoveServer(ctx, n.ID); err != nil {
		return "", fmt.Errorf("remove %s: %w", n.ID, err)
	}
	if err := env.Cluster.Restart(n, true); err != nil {
		return "", err
	}
	voters, err := env.Cluster.WaitVoters(ctx, len(env.Cluster.Nodes), 20*time.Second)
	if err != nil {
		return "", fmt.Errorf("%s not a voter again: %w", n.ID, err)
	}
	return "removed " + n.ID + ", wiped its data dir, started it as a joiner; voters " + strings.Join(voters, ","), nil
}
