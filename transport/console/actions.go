package console

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/quorumq/quorumq/client"
)

// confirmData is the confirmation page an action shows before it acts:
// the same form again, with confirmed=yes.
type confirmData struct {
	Queue, Action, Title, What, Button string
	Danger                             bool
	Fields                             map[string]string
}

// confirmed reports whether the POST is the confirmed one; if not, it
// renders the confirmation page and the action does nothing.
func (c *Console) confirmed(w http.ResponseWriter, r *http.Request, v *view, d *confirmData) bool {
	if r.PostFormValue("confirmed") == "yes" {
		return true
	}
	d.Queue = r.PathValue("queue")
	v.Page, v.Confirm = "confirm", d
	c.render(w, http.StatusOK, "confirm", v)
	return false
}

// done redirects to the queue page with the action's outcome.
func done(w http.ResponseWriter, r *http.Request, queue, msg string) {
	http.Redirect(w, r, prefix+"queues/"+url.PathEscape(queue)+"?done="+url.QueryEscape(msg), http.StatusSeeOther)
}

// redriveTimeout bounds a redrive from the console (the admin server
// writes a response for at most 30 s); what is left of a longer one is
// moved by pressing the button again.
const redriveTimeout = 25 * time.Second

// maxTestBody bounds the test message a form may send.
const maxTestBody = 4096

func (c *Console) sendAction(w http.ResponseWriter, r *http.Request, v *view) {
	queue := r.PathValue("queue")
	body, dedup := r.PostFormValue("body"), strings.TrimSpace(r.PostFormValue("dedup"))
	if len(body) > maxTestBody {
		c.fail(w, r, v.se, http.StatusBadRequest, fmt.Errorf("test message body: %d bytes, at most %d", len(body), maxTestBody))
		return
	}
	what := fmt.Sprintf("Send one message of %d bytes to queue %q", len(body), queue)
	if dedup != "" {
		what += fmt.Sprintf(" with dedup ID %q", dedup)
	}
	if !c.confirmed(w, r, v, &confirmData{Action: "send", Title: "Send a test message", What: what + ".",
		Button: "Send", Fields: map[string]string{"body": body, "dedup": dedup}}) {
		return
	}
	ctx, api, cancel, ok := c.call(w, r, v, "queue", callTimeout)
	if !ok {
		return
	}
	defer cancel()
	var opts []client.SendOption
	if dedup != "" {
		opts = append(opts, client.WithDedupID(dedup))
	}
	res, err := api.Send(ctx, queue, []byte(body), opts...)
	if err != nil {
		c.apiFail(w, v, "queue", err)
		return
	}
	msg := fmt.Sprintf("Sent message %d (dedup ID %s).", res.MessageID, res.DedupID)
	if res.Duplicate {
		msg = fmt.Sprintf("Not sent: dedup ID %s is already message %d.", res.DedupID, res.MessageID)
	}
	done(w, r, queue, msg)
}

func (c *Console) redriveAction(w http.ResponseWriter, r *http.Request, v *view) {
	queue, from := r.PathValue("queue"), r.PostFormValue("from")
	ctx, api, cancel, ok := c.call(w, r, v, "queue", redriveTimeout)
	if !ok {
		return
	}
	defer cancel()
	// Only this queue and its own dead-letter queue may be redriven from
	// its page, so that a forged "from" cannot name any queue.
	if from != queue {
		info, err := api.GetQueue(ctx, queue)
		if err != nil {
			c.apiFail(w, v, "queue", err)
			return
		}
		if from == "" || from != info.Settings.DeadLetterQueue {
			c.fail(w, r, v.se, http.StatusBadRequest, fmt.Errorf("redrive from %q: want %q or its dead-letter queue", from, queue))
			return
		}
	}
	src, err := api.GetQueue(ctx, from)
	if err != nil {
		c.apiFail(w, v, "queue", err)
		return
	}
	what := fmt.Sprintf("Move the %d dead letters held in queue %q back to the queues they came from.", src.Stats.DeadLettered, from)
	if d := src.Stats.Dead; d > 0 {
		what += fmt.Sprintf(" Its own %d dead messages go back into %q.", d, from)
	}
	if !c.confirmed(w, r, v, &confirmData{Action: "redrive", Title: "Redrive dead letters", What: what,
		Button: "Redrive", Fields: map[string]string{"from": from}}) {
		return
	}
	n, err := api.Redrive(ctx, from, "", 0)
	if err != nil {
		c.apiFail(w, v, "queue", fmt.Errorf("redrive %s after %d moved: %w", from, n, err))
		return
	}
	done(w, r, queue, fmt.Sprintf("Redrove %d dead letters out of %s.", n, from))
}

func (c *Console) purgeAction(w http.ResponseWriter, r *http.Request, v *view) {
	queue := r.PathValue("queue")
	if !c.confirmed(w, r, v, &confirmData{Action: "purge", Title: "Purge queue " + queue, Danger: true,
		What:   fmt.Sprintf("Delete every message of queue %q: ready, leased, delayed, waiting and dead. This cannot be undone.", queue),
		Button: "Purge " + queue}) {
		return
	}
	ctx, api, cancel, ok := c.call(w, r, v, "queue", callTimeout)
	if !ok {
		return
	}
	defer cancel()
	n, err := api.Purge(ctx, queue)
	if err != nil {
		c.apiFail(w, v, "queue", err)
		return
	}
	done(w, r, queue, fmt.Sprintf("Purged %d messages from %s.", n, queue))
}
