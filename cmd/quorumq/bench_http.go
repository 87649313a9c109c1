package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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
// addr, with a fresh dedup ID as client.Send picks one, over a pool of
// keep-alive connections (one per producer).
func httpSend(addr, token string, producers int) sendFunc {
	hc := &http.Client{Transport: &http.Transport{MaxIdleConns: producers, MaxIdleConnsPerHost: producers, IdleConnTimeout: time.Minute}}
	run := time.Now().UnixNano()
	var seq atomic.Int64
	type message struct {
		Body    []byte `json:"body"`
		DedupID string `json:"dedupId"`
	}
	type request struct {
		Messages []message `json:"messages"`
	}
	return func(ctx context.Context, queue string, body []byte, _ string) error {
		b, err := json.Marshal(request{Messages: []message{{Body: body, DedupID: fmt.Sprintf("bench-%d-%d", run, seq.Add(1))}}})
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/queues/"+queue+"/messages", bytes.NewReader(b))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		out, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %d: %s", resp.StatusCode, out)
		}
		return nil
	}
}
