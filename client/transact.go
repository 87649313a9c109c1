package client

import (
	"context"
	"fmt"

	"google.golang.org/grpc"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// TxAck is one receipt acked by a Transaction.
type TxAck struct {
	Queue   string
	Receipt Receipt
}

// TxEnqueue is one message enqueued by a Transaction.
type TxEnqueue struct {
	Queue   string
	Message OutMessage
}

// Transaction acks receipts and enqueues messages, all or nothing.
type Transaction struct {
	Acks     []TxAck
	Enqueues []TxEnqueue
}

// Transact applies tx in one Raft entry: either every receipt is acked and
// every message enqueued, or nothing changes. A stale receipt fails it with
// an error matching ErrLeaseLost. It is safe to retry: messages without a
// DedupID get one before the first attempt, and acking an acked receipt
// again succeeds, so a retry of an applied transaction changes nothing and
// reports the enqueues as duplicates.
func (c *Client) Transact(ctx context.Context, tx Transaction) ([]SendResult, error) {
	if len(tx.Acks) == 0 && len(tx.Enqueues) == 0 {
		return nil, invalidArg("Transact tx", "needs at least one ack or enqueue")
	}
	req := &quorumqpb.TransactionRequest{}
	// Acks are grouped per queue, keeping first-seen order; order maps
	// outcomes (which come in request order) back to tx.Acks.
	var order []Receipt
	byQueue := map[string]*quorumqpb.AckRequest{}
	var queues []string
	for i, a := range tx.Acks {
		if err := validateQueueName(fmt.Sprintf("Transact Acks[%d].Queue", i), a.Queue); err != nil {
			return nil, err
		}
		if err := validateReceipts(fmt.Sprintf("Transact Acks[%d].Receipt", i), a.Queue, []Receipt{a.Receipt}); err != nil {
			return nil, err
		}
		ar := byQueue[a.Queue]
		if ar == nil {
			ar = &quorumqpb.AckRequest{Queue: a.Queue}
			byQueue[a.Queue] = ar
			queues = append(queues, a.Queue)
		}
		ar.Receipts = append(ar.Receipts, &fsmpb.Receipt{MessageId: a.Receipt.MessageID, Attempt: a.Receipt.Attempt, Queue: a.Receipt.Queue})
	}
	for _, q := range queues {
		req.Acks = append(req.Acks, byQueue[q])
		for _, r := range byQueue[q].Receipts {
			order = append(order, Receipt{MessageID: r.MessageId, Attempt: r.Attempt, Queue: r.Queue})
		}
	}
	var sent []*fsmpb.Message
	var generated []bool
	for i, e := range tx.Enqueues {
		field := fmt.Sprintf("Transact Enqueues[%d]", i)
		if err := validateQueueName(field+".Queue", e.Queue); err != nil {
			return nil, err
		}
		m, gen, err := messagePB(field+".Message", e.Message)
		if err != nil {
			return nil, err
		}
		sent, generated = append(sent, m), append(generated, gen)
		if n := len(req.Enqueues); n > 0 && req.Enqueues[n-1].Queue == e.Queue {
			req.Enqueues[n-1].Messages = append(req.Enqueues[n-1].Messages, m)
		} else {
			req.Enqueues = append(req.Enqueues, &quorumqpb.EnqueueRequest{Queue: e.Queue, Messages: []*fsmpb.Message{m}})
		}
	}
	var resp *quorumqpb.TransactionResponse
	err := c.call(ctx, "Transact", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).Transaction(ctx, req)
		return err
	}, nil)
	if err != nil {
		return nil, err
	}
	if err := ackError("Transact", "", order, resp.GetAckOutcomes(), nil); err != nil {
		return nil, err
	}
	return sendResults("Transact", sent, generated, resp.GetEnqueued())
}
