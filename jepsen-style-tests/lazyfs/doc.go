// Package lazyfs is a FUSE file system that forgets what was never synced,
// so a test can cut the power of one quorumq node and see whether anything
// it acknowledged depended on data that only lived in the page cache.
//
// Killing a process does not test fsync: the kernel keeps the page cache,
// so data written and never synced survives kill -9. lazyfs puts that
// cache in its own hands. It mounts a loopback view of a backing
// directory; every write and truncate of a regular file is held in memory
// (an ordered list of pending operations per file) and reaches the backing
// file only when a process calls fsync or fdatasync on it. Reads, stat and
// mmap see the pending data, so programs behave as on any file system
// until [FS.PowerFailure], which unmounts, drops (or, as a variant, tears)
// every file's pending operations and mounts the directory again: what the
// programs find afterwards is exactly what they made durable.
//
// # What it models
//
//   - File data and file size (write, pwrite, truncate, ftruncate, open
//     with O_TRUNC) are volatile until fsync(2) or fdatasync(2) of that
//     file. Both apply all of the file's pending operations in order and
//     fsync the backing file; fdatasync is not weaker than fsync here.
//     close(2) (FUSE flush) makes nothing durable, as on Linux.
//   - [Drop] loses every unsynced operation. [Torn] keeps, per file, a
//     random prefix of its unsynced operations in the order they were
//     made, with the first dropped write itself cut at a random byte: a
//     torn write. Real disks tear at sector granularity and may reorder
//     writes that were never ordered by a flush; lazyfs tears at any byte
//     and never reorders, so it is harsher about tearing and milder about
//     reordering.
//
// # What it does not model
//
//   - Directory operations are durable at once: create, mkdir, unlink,
//     rmdir, rename, link and symlink reach the backing directory when they
//     happen, and fsync of a directory always succeeds. A program that
//     forgets to fsync a directory after a rename is not caught. This is
//     the simpler model, chosen on purpose; raft's FileSnapshotStore and
//     quorumq's node.json do fsync their directories anyway.
//   - Metadata other than size (mode, owner, times, xattrs) is durable at
//     once.
//   - Writes through a shared writable mmap are not intercepted page by
//     page: the kernel sends them as ordinary writes when it flushes the
//     mapping. bbolt only reads through its mmap and writes with pwrite,
//     so it is fully covered. fallocate and copy_file_range answer
//     ENOTSUP (callers fall back to plain writes).
//   - One backing file system: pending state is keyed by the backing inode
//     number, so the backing directory must not span mount points.
//
// # Using it
//
// A power failure must hit a dead process: kill -9 the program using the
// mount and wait for it, then call PowerFailure, then restart the program
// on the same mount point. PowerFailure refuses (and changes nothing) when
// the mount is still busy. Mounting needs /dev/fuse and root (a direct
// mount) or the fusermount helper (Debian package fuse3); [Available]
// says which is missing, and tests skip with its message. A Go process must
// not mmap files of a mount it serves itself: a page fault waiting for the
// FUSE server can deadlock with the garbage collector's stop-the-world
// (run such programs, bbolt among them, as child processes).
//
// [FS.HoldNextFsync] cuts the power at the worst moment: the next fsync of
// unsynced data is held (never completes) until the process is killed, so
// the power failure certainly finds data that the process was waiting to
// make durable. [FS.HoldNextFsyncOf] holds only the fsync of chosen files
// (a snapshot being written). [FS.LieAboutFsync] makes fsync succeed
// without making anything durable, a disk that lies, for tests that must
// see acknowledged data lost.
//
// # Nemeses
//
// [PowerFail] and [PowerFailMidFsync] kill one, some or all [Target]s at
// the same moment, cut the power of their mounts and restart them.
// [FlipBit], [FlipBitsAt], [FlipRandomBits] and [Truncate] corrupt a
// stopped node's files on the backing side. DESIGN.md says how the fault
// suite uses them.
package lazyfs
