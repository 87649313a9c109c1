package jepsen

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"
)

// Status is how an operation ended, from the client's point of view.
type Status string

const (
	// StatusOK: the cluster confirmed the operation.
	StatusOK Status = "ok"
	// StatusFail: the operation definitely did not take effect.
	StatusFail Status = "fail"
	// StatusUnknown: the operation may or may not have taken effect
	// (outcome unknown, deadline after submission, connection lost).
	StatusUnknown Status = "unknown"
)

// Op kinds recorded by the workloads.
const (
	KindSend     = "send"
	KindReceive  = "receive"
	KindAck      = "ack"
	KindTransact = "transact"
	KindEnqueue  = "enqueue" // FIFO workload
	KindDequeue  = "dequeue" // FIFO workload
	KindNack     = "nack"    // groups workload: one receipt given back
	KindReject   = "reject"  // groups workload: one receipt dead-lettered
	// KindReadDLQ is a read of every dead letter in a dead-letter queue
	// (Queue), once the drain is over; Delivered lists them.
	KindReadDLQ = "read-dlq"
)

// Delivered is one message as a receive returned it.
type Delivered struct {
	Value     string `json:"value"`
	MessageID uint64 `json:"message_id"`
	Attempt   uint32 `json:"attempt"`
	DedupID   string `json:"dedup_id,omitempty"`
	// Group is the message's group as the server reported it.
	Group string `json:"group,omitempty"`
	// DeadLetterOf is, for a dead letter read from a dead-letter queue,
	// the message ID it had in its source queue.
	DeadLetterOf uint64 `json:"dead_letter_of,omitempty"`
}

// Op is one completed client operation. Start and End are nanoseconds since
// the start of the run, so histories of different runs line up on the plots.
type Op struct {
	Index    int    `json:"index"`
	Worker   string `json:"worker"`
	Workload string `json:"workload"`
	Kind     string `json:"kind"`
	Queue    string `json:"queue"`
	// Value, Producer and Seq describe a sent message: Seq is the
	// producer's sequence number, so per-producer order can be checked.
	// A message sent with a group (Group) has a sequence of its group's:
	// Seq counts the producer's messages of that group.
	Value    string `json:"value,omitempty"`
	Producer string `json:"producer,omitempty"`
	Group    string `json:"group,omitempty"`
	Seq      int    `json:"seq,omitempty"`
	DedupID  string `json:"dedup_id,omitempty"`
	// MessageID is the ID the cluster assigned to a sent message (or the
	// message an ack or transaction refers to).
	MessageID uint64 `json:"message_id,omitempty"`
	// Attempt is the delivery attempt of the receipt an ack, nack or
	// reject of one message (Value, MessageID) settles or gives back.
	Attempt uint32 `json:"attempt,omitempty"`
	// Duplicate is the cluster's dedup answer to a send.
	Duplicate bool `json:"duplicate,omitempty"`
	// Delivered lists the messages an ok receive returned.
	Delivered []Delivered `json:"delivered,omitempty"`
	// Visibility is the lease a receive asked for (0: auto-ack, or the
	// queue's default).
	Visibility int64  `json:"visibility_ns,omitempty"`
	Status     Status `json:"status"`
	Error      string `json:"error,omitempty"`
	Start      int64  `json:"start_ns"`
	End        int64  `json:"end_ns"`
	// Drain marks operations of the final, fault-free drain.
	Drain bool `json:"drain,omitempty"`
}

// Latency is the operation's duration.
func (o Op) Latency() time.Duration { return time.Duration(o.End - o.Start) }

// Recorder collects operations from concurrent workers and writes each to
// history.jsonl as it completes, so a crashed run still leaves its history.
type Recorder struct {
	start time.Time

	mu  sync.Mutex
	ops []Op
	f   *os.File
	w   *bufio.Writer
	err error
}

// NewRecorder starts a history at path; the run's clock starts now.
func NewRecorder(path string) (*Recorder, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	return &Recorder{start: time.Now(), f: f, w: bufio.NewWriter(f)}, nil
}

// Start is the instant the run's clock reads zero.
func (r *Recorder) Start() time.Time { return r.start }

// Since is the run's clock: nanoseconds since the start.
func (r *Recorder) Since() int64 { return int64(time.Since(r.start)) }

// Record appends op, assigning its index.
func (r *Recorder) Record(op Op) {
	r.mu.Lock()
	defer r.mu.Unlock()
	op.Index = len(r.ops)
	r.ops = append(r.ops, op)
	if r.err != nil {
		return
	}
	b, err := json.Marshal(op)
	if err == nil {
		b = append(b, '\n')
		_, err = r.w.Write(b)
	}
	r.err = err
}

// Ops returns a copy of every operation recorded so far.
func (r *Recorder) Ops() []Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Op(nil), r.ops...)
}

// Counts returns how many operations ended ok, failed and unknown.
func (r *Recorder) Counts() (ok, fail, unknown int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range r.ops {
		switch o.Status {
		case StatusOK:
			ok++
		case StatusFail:
			fail++
		default:
			unknown++
		}
	}
	return
}

// Close flushes and closes history.jsonl.
func (r *Recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return r.err
	}
	if err := r.w.Flush(); err != nil && r.err == nil {
		r.err = err
	}
	if err := r.f.Close(); err != nil && r.err == nil {
		r.err = err
	}
	r.f = nil
	return r.err
}

// ReadHistory loads a history.jsonl written by a Recorder.
func ReadHistory(path string) ([]Op, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ops []Op
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for line := 1; sc.Scan(); line++ {
		var o Op
		if err := json.Unmarshal(sc.Bytes(), &o); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		ops = append(ops, o)
	}
	return ops, sc.Err()
}
