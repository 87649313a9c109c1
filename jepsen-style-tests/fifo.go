package jepsen

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// FIFOInput is one FIFO operation as the model sees it.
type FIFOInput struct {
	Queue string
	Deq   bool   // false: enqueue Value
	Value string // enqueue: the value sent
}

// FIFOOutput is what the operation returned.
type FIFOOutput struct {
	Unknown bool   // the outcome is unknown: it may or may not have happened
	Empty   bool   // dequeue found nothing
	Value   string // dequeue: the value received
}

// sep joins queue contents into one comparable state string; workload
// values never contain it.
const sep = "\x1f"

// FIFOModel is the sequential specification of one quorumq queue used with
// auto-ack receives of one message: enqueue appends, dequeue removes and
// returns the head or reports empty. Operations whose outcome is unknown
// may or may not have happened, so the model is nondeterministic: an
// unknown enqueue leads to the state with and without the value, an unknown
// dequeue to the state with and without the head. A definitely failed
// operation is left out of the history altogether.
var FIFOModel = (&porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byQueue := map[string][]porcupine.Operation{}
		var names []string
		for _, op := range history {
			q := op.Input.(FIFOInput).Queue
			if _, ok := byQueue[q]; !ok {
				names = append(names, q)
			}
			byQueue[q] = append(byQueue[q], op)
		}
		sort.Strings(names)
		out := make([][]porcupine.Operation, 0, len(names))
		for _, q := range names {
			out = append(out, byQueue[q])
		}
		return out
	},
	Init: func() []interface{} { return []interface{}{""} },
	Step: func(state, input, output interface{}) []interface{} {
		s := state.(string)
		in := input.(FIFOInput)
		out := output.(FIFOOutput)
		if !in.Deq {
			next := s + in.Value + sep
			if out.Unknown {
				return []interface{}{s, next}
			}
			return []interface{}{next}
		}
		head, rest, nonEmpty := strings.Cut(s, sep)
		switch {
		case out.Unknown:
			if nonEmpty {
				return []interface{}{s, rest}
			}
			return []interface{}{s}
		case out.Empty:
			if !nonEmpty {
				return []interface{}{s}
			}
			return nil
		case nonEmpty && head == out.Value:
			return []interface{}{rest}
		default:
			return nil
		}
	},
	DescribeOperation: func(input, output interface{}) string {
		in := input.(FIFOInput)
		out := output.(FIFOOutput)
		var res string
		switch {
		case out.Unknown:
			res = "?"
		case !in.Deq:
			res = "ok"
		case out.Empty:
			res = "empty"
		default:
			res = out.Value
		}
		if in.Deq {
			return fmt.Sprintf("%s: deq() -> %s", in.Queue, res)
		}
		return fmt.Sprintf("%s: enq(%s) -> %s", in.Queue, in.Value, res)
	},
	DescribeState: func(state interface{}) string {
		s := strings.TrimSuffix(state.(string), sep)
		return "[" + strings.ReplaceAll(s, sep, " ") + "]"
	},
}).ToModel()

// FIFOOperations turns the FIFO workload's part of a history into porcupine
// operations. An operation with an unknown outcome gets a return time after
// the end of the history: it may take effect at any point after its call.
func FIFOOperations(ops []Op, workload string) []porcupine.Operation {
	var end int64
	for _, o := range ops {
		end = max(end, o.End)
	}
	clients := map[string]int{}
	var out []porcupine.Operation
	for _, o := range ops {
		if o.Workload != workload || (o.Kind != KindEnqueue && o.Kind != KindDequeue) || o.Status == StatusFail {
			continue
		}
		id, ok := clients[o.Worker]
		if !ok {
			id = len(clients)
			clients[o.Worker] = id
		}
		in := FIFOInput{Queue: o.Queue, Deq: o.Kind == KindDequeue, Value: o.Value}
		var res FIFOOutput
		ret := o.End
		switch {
		case o.Status == StatusUnknown:
			res.Unknown = true
			ret = end + 1
		case in.Deq && len(o.Delivered) == 0:
			res.Empty = true
		case in.Deq:
			res.Value = o.Delivered[0].Value
		}
		out = append(out, porcupine.Operation{ClientId: id, Input: in, Call: o.Start, Output: res, Return: ret})
	}
	return out
}

// FIFOResult is the outcome of the linearizability check.
type FIFOResult struct {
	Operations int    `json:"operations"`
	Unknown    int    `json:"unknown_outcomes"`
	Result     string `json:"result"` // Ok, Illegal, or Unknown (timed out)
	Valid      bool   `json:"valid"`
	// Visualization is the file name of porcupine's HTML page, if written.
	Visualization string `json:"visualization,omitempty"`
}

// CheckFIFO checks the FIFO workload's history for linearizability against
// FIFOModel within timeout. When vizPath is not empty, porcupine's
// visualisation is written there. A timeout is reported as "Unknown" and is
// not counted as valid or invalid by the caller's choice: Valid is false
// only for Illegal.
func CheckFIFO(ops []Op, workload string, timeout time.Duration, vizPath string) (FIFOResult, error) {
	pops := FIFOOperations(ops, workload)
	res := FIFOResult{Operations: len(pops)}
	for _, p := range pops {
		if p.Output.(FIFOOutput).Unknown {
			res.Unknown++
		}
	}
	check, info := porcupine.CheckOperationsVerbose(FIFOModel, pops, timeout)
	res.Result = string(check)
	res.Valid = check != porcupine.Illegal
	if vizPath != "" {
		if err := porcupine.VisualizePath(FIFOModel, info, vizPath); err != nil {
			return res, fmt.Errorf("porcupine visualisation: %w", err)
		}
		res.Visualization = vizPath
	}
	return res, nil
}
