// Package client is the Go client of quorumq. It carries the client's half
// of every delivery guarantee, so that the safe thing is the default:
//
//   - Leader discovery. New connects to any of the given nodes, learns the
//     member list and the leader, and keeps both current in the background
//     and on every "not leader" answer (which names the leader).
//   - Retries that never duplicate. Every call retries on "not leader", "no
//     leader" and broken connections with jittered exponential backoff,
//     inside the caller's context. The IDs that make a retry harmless are
//     chosen once, before the first attempt: a dedup ID per message for
//     Send, SendBatch, Producer and Transact (a ULID when the caller gives
//     none), a request ID per Receive (a retried Receive gets the same
//     deliveries back instead of leasing new ones), and the receipts for
//     Ack, Nack, Reject and Extend.
//   - Unknown outcomes. When the server (or a broken connection) cannot say
//     whether a command was applied, idempotent calls are retried with the
//     same IDs. Calls that are not idempotent — CreateQueue, DeleteQueue,
//     Purge and TransferLeadership — are sent only on a connection that is up
//     (so "node down" is retried elsewhere), and after an unknown outcome
//     return an error that matches ErrOutcomeUnknown: the caller decides.
//     EnsureQueue is the idempotent way to create a queue. Lookup tells
//     what became of one message by id or dedup ID (landed or not, and
//     where it is now), within the queue's dedup window.
//   - Consumer names. Each Receive names its consumer (WithConsumerName,
//     default host:pid) on the leases it takes; peek and Lookup show it.
//   - Order. One goroutine's Sends to a queue are enqueued in call order
//     (each returns once committed). A Producer enqueues a queue's messages
//     in SendAsync order although it keeps up to four full batches in
//     flight: they travel in order on one stream and each is chained
//     behind the one before (after_dedup_id), so the state machine refuses
//     a batch whose predecessor is not in the queue and the Producer sends
//     it again behind it. A batch that finally fails leaves a gap, never a
//     reordering. Against a server of an older release (no EnqueueStream)
//     the Producer sends one batch of a queue at a time for a minute, then
//     tries the stream again; a cluster with a voter that does not know
//     after_dedup_id keeps the order on the leader (docs/operations.md,
//     Upgrading). Messages of a group (WithGroup) are delivered one at a
//     time in enqueue order, the next once the one before is acked (or
//     rejected, or dead-lettered), and
//     Consume runs a group's handlers one at a time, in that order, also
//     when a message is delivered again while its earlier handler runs.
//   - Leases. Consume runs a handler per message with a concurrency limit,
//     extends the lease while the handler runs, acks on success (in
//     batches), nacks with backoff on error and stops cleanly when its
//     context ends. ConsumeExactlyOnce acks the input and enqueues the
//     handler's outputs in one transaction, with output dedup IDs derived
//     from the input message, so a redelivery that reaches the handler again
//     cannot enqueue twice.
//
// Idempotency of the lease calls, after an unknown outcome:
//
//   - Ack: acking an acked receipt again is OK (the FSM keeps a tombstone for
//     the dedup window), so a retry is exact.
//   - Reject: rejecting a rejected receipt again is OK (its tombstone says
//     it was rejected), so a retry is exact.
//   - Extend: if the first attempt was applied the retry extends again; if
//     it was not and the lease expired meanwhile, LeaseLost is the truth.
//   - Nack: if the first attempt was applied, the message may already be
//     leased to another consumer and the retry reports LeaseLost although
//     this caller's nack released it. Either way the message is no longer
//     this caller's and will be delivered again, which is what a Nack asks
//     for, so after an unknown outcome Nack reports LeaseLost as success.
//   - Send/SendBatch/Transact: a retry of an applied enqueue returns the
//     original message ID with the duplicate flag. For a dedup ID the client
//     generated this can only be its own earlier attempt, so the result says
//     Duplicate = false; for a caller-given ID it says Duplicate = true
//     (the ID was recorded, possibly by an earlier attempt of this call).
//   - Receive: the retry carries the same request ID and does not long-poll,
//     so the server answers from its replay table with the deliveries the
//     lost attempt leased (those still leased under their receipts; with
//     auto-ack, all of them), instead of waiting for other messages.
//
// Errors are typed: errors.Is(err, ErrLeaseLost), ErrQueueNotFound,
// ErrQueueExists, ErrQueueFull, ErrOutcomeUnknown, ErrInvalidArgument,
// ErrUnauthenticated, ErrPermissionDenied (and ErrOutOfOrder, which only
// callers of the raw wire API see: the Producer handles it). Bad arguments are caught before
// any network call where the rule is known on the client (queue names,
// counts, durations) and the error names the field and the limit.
//
// The client imports only the wire (package transport and its generated
// stubs), never the server packages, so it can be vendored alone.
package client
