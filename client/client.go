package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// Option configures a Client.
type Option func(*options)

type options struct {
	tls            *tls.Config
	token          string
	logger         *slog.Logger
	backoffMin     time.Duration
	backoffMax     time.Duration
	attemptTimeout time.Duration
	refresh        time.Duration
	noGathering    bool
	consumer       *string // nil: DefaultConsumerName()
}

// WithTLS makes the client speak TLS with the given configuration.
func WithTLS(cfg *tls.Config) Option { return func(o *options) { o.tls = cfg } }

// WithToken sends token as "authorization: Bearer <token>" on every call.
// gRPC sends it only over TLS (see WithTLS), so a token never travels in
// the clear.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithLogger sets where the client logs retries and leader changes (at
// debug level). The default discards.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithBackoff sets the bounds of the jittered exponential backoff between
// retries. Defaults: 25 ms and 1 s.
func WithBackoff(min, max time.Duration) Option {
	return func(o *options) { o.backoffMin, o.backoffMax = min, max }
}

// WithAttemptTimeout bounds one attempt of a call (the long-poll wait of a
// Receive is added to it), so that a node that hangs — paused, or cut off by
// a partition — is given up on and the call retried elsewhere while the
// caller's context still has time. Default 10 s.
func WithAttemptTimeout(d time.Duration) Option { return func(o *options) { o.attemptTimeout = d } }

// WithSendGathering turns the gathering of concurrent Sends to one queue
// into one Enqueue RPC on (the default) or off. Off, every Send is its own
// RPC and its own Raft entry: the cluster then spends its time on
// per-entry work instead of on messages (see docs/performance.md).
func WithSendGathering(on bool) Option { return func(o *options) { o.noGathering = !on } }

// WithRefreshInterval sets how often the client re-reads the member list
// and the leader in the background. Default 5 s.
func WithRefreshInterval(d time.Duration) Option { return func(o *options) { o.refresh = d } }

// Client is a connection to a quorumq cluster. It is safe for concurrent
// use; create one per process and Close it when done.
type Client struct {
	opts options
	log  *slog.Logger
	// consumer is the consumer name each Receive gives by default.
	consumer string

	mu     sync.Mutex
	seeds  []string
	addrs  []string // seeds ∪ members' API addresses, in a stable order
	conns  map[string]*grpc.ClientConn
	leader string // API address of the believed leader; "" when unknown
	next   int    // round-robin cursor over addrs when no leader is known
	closed bool

	// sender gathers concurrent Sends (nil with WithSendGathering(false)).
	sender *Producer
	// unaryUntil (Unix ns): until then Producers send with unary Enqueue
	// calls, one batch of a queue at a time, because a node answered
	// EnqueueStream Unimplemented (a server of an older release).
	unaryUntil atomic.Int64

	stop chan struct{}
	done chan struct{}
}

// WithConsumerName sets the consumer name every Receive of the client
// gives (WithConsumer overrides it for one receive): each lease it takes
// carries the name, so that peek and Lookup show who holds it. At most
// 128 bytes of UTF-8 without control characters; "" gives none. The
// default is DefaultConsumerName().
func WithConsumerName(name string) Option { return func(o *options) { o.consumer = &name } }

// DefaultConsumerName is the consumer name a client gives when none is
// set: host:pid, the host name cut to fit the 128-byte limit.
func DefaultConsumerName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	pid := ":" + strconv.Itoa(os.Getpid())
	host = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, host)
	if max := wire.MaxConsumer - len(pid); len(host) > max {
		host = strings.ToValidUTF8(host[:max], "")
	}
	return host + pid
}

func (o *options) consumerName() string {
	if o.consumer != nil {
		return *o.consumer
	}
	return DefaultConsumerName()
}

// New connects to the cluster at any of addrs (host:port of the nodes' API
// listeners), learns the member list and the leader, and keeps both
// current. It retries until one node answers or ctx ends, so it may be
// given a node that is still starting.
func New(ctx context.Context, addrs []string, opts ...Option) (*Client, error) {
	o := options{
		backoffMin:     25 * time.Millisecond,
		backoffMax:     time.Second,
		attemptTimeout: 10 * time.Second,
		refresh:        5 * time.Second,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(addrs); err != nil {
		return nil, err
	}
	log := o.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{
		consumer: o.consumerName(),
		opts:     o,
		log:      log,
		seeds:    slices.Clone(addrs),
		addrs:    slices.Clone(addrs),
		conns:    map[string]*grpc.ClientConn{},
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	bo := backoff{min: o.backoffMin, max: o.backoffMax}
	for {
		err := c.refresh(ctx)
		if err == nil {
			break
		}
		if errors.Is(err, ErrUnauthenticated) || errors.Is(err, ErrPermissionDenied) {
			c.closeConns()
			return nil, err
		}
		if serr := sleepCtx(ctx, bo.next()); serr != nil {
			c.closeConns()
			return nil, fmt.Errorf("connect to %v: %w (last error: %v)", addrs, serr, err)
		}
	}
	if !o.noGathering {
		c.sender = newSendGatherer(c)
	}
	go c.refreshLoop()
	return c, nil
}

func (o *options) validate(addrs []string) error {
	if len(addrs) == 0 {
		return invalidArg("addrs", "at least one node address is required")
	}
	for i, a := range addrs {
		if a == "" {
			return invalidArg(fmt.Sprintf("addrs[%d]", i), "empty address")
		}
	}
	if o.backoffMin <= 0 || o.backoffMax < o.backoffMin {
		return invalidArg("WithBackoff", "need 0 < min <= max, got min %v max %v", o.backoffMin, o.backoffMax)
	}
	if o.attemptTimeout <= 0 {
		return invalidArg("WithAttemptTimeout", "must be > 0, got %v", o.attemptTimeout)
	}
	if o.token != "" && o.tls == nil {
		return invalidArg("WithToken", "a token needs WithTLS: it must not travel in the clear")
	}
	if o.refresh <= 0 {
		return invalidArg("WithRefreshInterval", "must be > 0, got %v", o.refresh)
	}
	if o.consumer != nil {
		if err := wire.ValidateConsumer("WithConsumerName", *o.consumer); err != nil {
			return fromStatus("", err)
		}
	}
	return nil
}

// newSendGatherer returns the Producer behind c's Send: no linger, one
// batch per queue on the wire, no bound of its own (each Send waits for
// its result, so callers bound it), retried while a caller waits.
func newSendGatherer(c *Client) *Producer {
	p := c.NewProducer(WithLinger(0), WithBatchesInFlight(1), WithMaxInFlight(math.MaxInt32, math.MaxInt64))
	p.o.caller, p.o.op, p.o.callerContexts = "Send", "Send", true
	return p
}

// Close stops the background refresh and closes every connection. Calls in
// progress fail.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	if c.sender != nil {
		c.sender.mu.Lock()
		c.sender.closed = true // in-flight batches fail with ErrClosed
		c.sender.mu.Unlock()
	}
	close(c.stop)
	<-c.done
	return c.closeConns()
}

func (c *Client) closeConns() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for a, cc := range c.conns {
		errs = append(errs, cc.Close())
		delete(c.conns, a)
	}
	return errors.Join(errs...)
}

func (c *Client) refreshLoop() {
	defer close(c.done)
	t := time.NewTicker(c.opts.refresh)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), c.opts.attemptTimeout)
			if err := c.refresh(ctx); err != nil {
				c.log.Debug("quorumq: refresh members", "err", err)
			}
			cancel()
		}
	}
}

// refresh asks one reachable node (the leader first) for the members and
// the leader.
func (c *Client) refresh(ctx context.Context) error {
	c.mu.Lock()
	cands := slices.Clone(c.addrs)
	if c.leader != "" {
		cands = append([]string{c.leader}, cands...)
	}
	c.mu.Unlock()
	var errs []error
	for _, a := range cands {
		cc, err := c.conn(a)
		if err != nil {
			return err
		}
		cl := quorumqpb.NewClusterClient(cc)
		actx, cancel := context.WithTimeout(ctx, min(c.opts.attemptTimeout, 2*time.Second))
		mr, err := cl.Members(actx, &quorumqpb.MembersRequest{})
		var lr *quorumqpb.LeaderResponse
		if err == nil {
			lr, err = cl.Leader(actx, &quorumqpb.LeaderRequest{})
		}
		cancel()
		if err != nil {
			if e := fromStatus("connect", err); errors.Is(e, ErrUnauthenticated) || errors.Is(e, ErrPermissionDenied) {
				return e
			}
			errs = append(errs, fmt.Errorf("%s: %w", a, err))
			continue
		}
		c.setMembers(mr.GetMembers())
		if lr.GetLeaderApiAddr() != "" {
			c.setLeader(lr.GetLeaderApiAddr())
		}
		return nil
	}
	return errors.Join(errs...)
}

func (c *Client) setMembers(ms []*quorumqpb.Member) {
	c.mu.Lock()
	defer c.mu.Unlock()
	addrs := slices.Clone(c.seeds)
	for _, m := range ms {
		if a := m.GetApiAddr(); a != "" && m.GetState() != "left" && !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	for a, cc := range c.conns {
		if !slices.Contains(addrs, a) && a != c.leader {
			cc.Close()
			delete(c.conns, a)
		}
	}
	c.addrs = addrs
}

func (c *Client) setLeader(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leader != addr {
		c.log.Debug("quorumq: leader", "addr", addr)
	}
	c.leader = addr
	if addr != "" && !slices.Contains(c.addrs, addr) {
		c.addrs = append(c.addrs, addr)
	}
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// forgetLeader drops the leader if it is still addr (another call may have
// learned a newer one meanwhile).
func (c *Client) forgetLeader(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leader == addr {
		c.leader = ""
	}
}

// target is where the next attempt goes: the leader when known, otherwise
// the next address in turn.
func (c *Client) target() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leader != "" {
		return c.leader
	}
	a := c.addrs[c.next%len(c.addrs)]
	c.next++
	return a
}

func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	var creds credentials.TransportCredentials = insecure.NewCredentials()
	if c.opts.tls != nil {
		creds = credentials.NewTLS(c.opts.tls)
	}
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		// A receive may carry up to 1000 messages of up to 1 MiB each: far
		// past gRPC's 4 MiB default, which would fail the call after the
		// messages were leased.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.ForceCodecV2(wire.Codec())),
		experimental.WithBufferPool(wire.BufferPool),
	}
	if c.opts.token != "" {
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(tokenCreds{token: c.opts.token}))
	}
	cc, err := grpc.NewClient(addr, dialOpts...)
	if err != nil {
		return nil, invalidArg("addr", "%q: %v", addr, err)
	}
	c.conns[addr] = cc
	return cc, nil
}

type tokenCreds struct{ token string }

func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + t.token}, nil
}

func (t tokenCreds) RequireTransportSecurity() bool { return true }

// idempotency says whether a call may be sent again after an attempt whose
// outcome is unknown.
type idempotency bool

const (
	idempotent    idempotency = true
	notIdempotent idempotency = false
)

// call runs one API call with leader discovery and retries. attempt is
// called with the connection to try and a context bounded by the attempt
// timeout plus extra (the long-poll wait); it must be safe to call again
// with the same request when idem is idempotent. onUnknown, when not nil, is
// told that an attempt ended with an unknown outcome before a retry.
func (c *Client) call(ctx context.Context, op string, idem idempotency, extra time.Duration,
	attempt func(ctx context.Context, cc *grpc.ClientConn) error, onUnknown func()) error {
	bo := backoff{min: c.opts.backoffMin, max: c.opts.backoffMax}
	redirects := 0
	var lastErr error
	uncertain := false // an earlier attempt may have been applied
	for {
		if err := ctx.Err(); err != nil {
			return c.ctxErr(op, err, lastErr, uncertain)
		}
		if c.isClosed() {
			return fmt.Errorf("%s: %w", op, ErrClosed)
		}
		addr := c.target()
		cc, err := c.conn(addr)
		if err != nil {
			return err
		}
		if idem == notIdempotent && !c.ready(ctx, cc) {
			// Not sent: moving on to another node is safe.
			c.forgetLeader(addr)
			lastErr = fmt.Errorf("%s: not reachable", addr)
			if err := sleepCtx(ctx, bo.next()); err != nil {
				return c.ctxErr(op, err, lastErr, uncertain)
			}
			continue
		}
		actx, cancel := context.WithTimeout(ctx, c.opts.attemptTimeout+extra)
		err = attempt(actx, cc)
		cancel()
		if err == nil {
			return nil
		}
		lastErr = fmt.Errorf("%s: %w", addr, err)
		if id, hint, ok := wire.LeaderHint(err); ok {
			// Refused before proposing: always safe to send elsewhere.
			if hint != "" && hint != addr && redirects < 3 {
				redirects++
				c.log.Debug("quorumq: redirect", "op", op, "from", addr, "to", hint, "leader_id", id)
				c.setLeader(hint)
				continue
			}
			c.forgetLeader(addr)
			redirects = 0
			if err := sleepCtx(ctx, bo.next()); err != nil {
				return c.ctxErr(op, err, lastErr, uncertain)
			}
			continue
		}
		unknown := wire.IsOutcomeUnknown(err)
		broken := !unknown && isTransportErr(err)
		if !unknown && !broken {
			return fromStatus(op, err) // the server's definite answer
		}
		// The attempt may or may not have been applied.
		if broken {
			c.forgetLeader(addr)
		}
		if idem == notIdempotent {
			return &Error{Op: op, Kind: ErrOutcomeUnknown, Message: lastErr.Error(), cause: err}
		}
		uncertain = true
		if ctx.Err() != nil {
			return c.ctxErr(op, ctx.Err(), lastErr, uncertain)
		}
		if onUnknown != nil {
			onUnknown()
		}
		c.log.Debug("quorumq: retry after unknown outcome", "op", op, "addr", addr, "err", err)
		if err := sleepCtx(ctx, bo.next()); err != nil {
			return c.ctxErr(op, err, lastErr, uncertain)
		}
	}
}

// isTransportErr reports a failure of the connection rather than an answer
// of the server: the request may or may not have reached it.
func isTransportErr(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return true
	}
	return false
}

// ctxErr is the error of a call whose context ended. When an attempt may
// have been applied it also matches ErrOutcomeUnknown.
func (c *Client) ctxErr(op string, ctxErr, last error, uncertain bool) error {
	if uncertain {
		return fmt.Errorf("%s: %w: %w (last attempt: %v)", op, ErrOutcomeUnknown, ctxErr, last)
	}
	if last != nil {
		return fmt.Errorf("%s: %w (last attempt: %v)", op, ctxErr, last)
	}
	return fmt.Errorf("%s: %w", op, ctxErr)
}

// ready waits briefly for cc to be connected, so that a call that must not
// be retried is only sent on a working connection.
func (c *Client) ready(ctx context.Context, cc *grpc.ClientConn) bool {
	ctx, cancel := context.WithTimeout(ctx, min(c.opts.attemptTimeout, 2*time.Second))
	defer cancel()
	cc.Connect()
	for {
		s := cc.GetState()
		if s == connectivity.Ready {
			return true
		}
		if !cc.WaitForStateChange(ctx, s) {
			return false
		}
	}
}
