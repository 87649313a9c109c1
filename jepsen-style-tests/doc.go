// Package jepsen breaks a real, local three-node quorumq cluster on purpose
// and checks every message that went through it.
//
// It owns the whole fault-injection suite: the harness that starts the built
// binary as separate processes (each in its own Linux network namespace when
// running as root, on loopback otherwise), the nemeses that partition, kill,
// pause and remove nodes, cut their power and corrupt their files (data dirs
// on lazyfs mounts, see lazyfs/DESIGN.md) and move their wall clocks (a
// test build of the server reads its clock's offset from a file), the
// workloads that drive the Go
// client concurrently, the history recorder, the checkers and the report
// writer.
//
// Why it is built this way:
//
//   - Real processes and a real network. A fault that only exists inside one
//     Go process (a mocked transport, a paused goroutine) cannot show what
//     kill -9 does to an fsync, or what a node does when its packets vanish.
//     Every node is the shipped binary; every fault is done by the kernel.
//   - The bridge lives in a "switch" namespace of its own, and the test
//     process reaches it through one veth. Docker sets the root namespace's
//     FORWARD policy to DROP and may filter bridged traffic, so a bridge in
//     the root namespace can silently carry nothing.
//   - Partitions are nftables drop rules on the input hook inside each node's
//     namespace, the way Jepsen uses iptables: a symmetric partition drops on
//     both sides, a one-way partition on one side only. Clients in the test
//     process are never cut off, so they observe what the cluster answers.
//   - Names (namespaces, links, subnet) are derived from the process ID and
//     the seed, so parallel runs never collide, and every namespace and
//     process is removed on every exit path: test cleanup, SIGINT/SIGTERM,
//     and, for processes, the parent's death (Pdeathsig).
//   - The checkers are pure functions of a recorded history, so the tests in
//     checker_test.go can feed them hand-made histories with a lost, a
//     duplicated and an unexpected message and see each one rejected.
//   - Power failure is a file system's doing, not a kill's: kill -9 leaves
//     the page cache, so data never fsynced survives it. The power nemeses
//     run on lazyfs, which holds unsynced writes in memory and drops them.
//   - Every run takes one seed. The seed drives the fault schedule (which
//     nemesis, when, for how long, which nodes), so -seed replays it.
//
// The short profile (every nemesis once, about half a minute each) runs under
// plain `go test ./jepsen-style-tests/...`; QUORUMQ_JEPSEN_LONG=1 runs mixed
// schedules of several minutes. See README.md for how to read a report.
package jepsen
