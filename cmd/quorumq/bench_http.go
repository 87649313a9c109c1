package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/quorumq/quorumq/client"
)

// sendFunc is one sync producer's send in `quorumq bench`.
type sendFunc func(ctx context.Context, queue string, body []byte, group string) error

func grpcSend(c *client.Client) sendFunc {
	return func(ctx context.Context, queue string, body []byte, group string) error {
		_, err := c.Send(ctx, queue, body, client.WithGroup(group))
		return err
	}
}

// httpSend sends each message with POST /v1/queues/{queue}/messages to
// addr, with a fresh dedup ID as client.Send picks one, over keep-alive
// HTTP/1.1 connections (one per producer at most).
//
// A producer writes its request and reads the answer on its connection
// itself. net/http's client hands each request to two goroutines of its
// own per connection (one writes, one reads) and builds the JSON by
// reflection; with --dev those costs share the machine's cores with the
// nodes and were a third of the run's CPU samples, so they measured the
// bench's client more than the server.
func httpSend(addr, token string, producers int) sendFunc {
	idle := make(chan *httpConn, producers)
	run := time.Now().UnixNano()
	var seq atomic.Int64
	var auth string
	if token != "" {
		auth = "Authorization: Bearer " + token + "\r\n"
	}
	return func(ctx context.Context, queue string, body []byte, _ string) error {
		// {"messages":[{"body":"<base64>","dedupId":"bench-<run>-<n>"}]}
		js := make([]byte, 0, 64+base64.StdEncoding.EncodedLen(len(body)))
		js = append(js, `{"messages":[{"body":"`...)
		js = base64.StdEncoding.AppendEncode(js, body)
		js = fmt.Appendf(js, `","dedupId":"bench-%d-%d"}]}`, run, seq.Add(1))
		req := fmt.Appendf(make([]byte, 0, 160+len(js)),
			"POST /v1/queues/%s/messages HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n",
			url.PathEscape(queue), addr, auth, len(js))
		req = append(req, js...)

		var c *httpConn
		select {
		case c = <-idle:
		default:
			nc, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			if err != nil {
				return err
			}
			c = &httpConn{Conn: nc, r: bufio.NewReader(nc)}
		}
		status, answer, keep, err := c.roundTrip(req)
		if keep {
			idle <- c
		} else {
			c.Close()
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			// The run ended while the request was out: it is not counted.
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("HTTP %d: %s", status, answer)
		}
		return nil
	}
}

// httpConn is one keep-alive connection of httpSend.
type httpConn struct {
	net.Conn
	r *bufio.Reader
}

// httpRequestTimeout bounds one request of httpSend: the server answers
// a send in milliseconds, or its outcome is unknown.
const httpRequestTimeout = 30 * time.Second

// roundTrip writes req, a whole HTTP/1.1 request, and reads the answer;
// keep tells whether the connection can carry the next request.
func (c *httpConn) roundTrip(req []byte) (status int, answer []byte, keep bool, err error) {
	if err := c.SetDeadline(time.Now().Add(httpRequestTimeout)); err != nil {
		return 0, nil, false, err
	}
	if _, err := c.Write(req); err != nil {
		return 0, nil, false, err
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		return 0, nil, false, err
	}
	answer, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, answer, err == nil && !resp.Close, err
}
