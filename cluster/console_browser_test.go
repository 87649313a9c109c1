package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/quorumq/quorumq/client"
)

// findChromium returns the path of a Chromium to drive. Outside CI a
// missing browser skips the test; in CI (CI=true) it fails it, since
// .ci/run installs one.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no chromium on PATH: .ci/run installs Debian's chromium package")
	}
	t.Skip("no chromium on PATH (apt-get install chromium); the browser test of the console needs one")
	return ""
}

// screenshotDir is where the browser test saves its screenshots:
// $QUORUMQ_SCREENSHOTS, or a temporary directory.
func screenshotDir(t *testing.T) string {
	if d := os.Getenv("QUORUMQ_SCREENSHOTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// TestConsoleInBrowser drives the console in headless Chromium against a
// three-node cluster with tokens: a queue appears after a send, its depth
// follows receives without a reload, a redrive moves dead letters back,
// and a read-only token gets no action buttons.
func TestConsoleInBrowser(t *testing.T) {
	chromium := findChromium(t)
	shots := screenshotDir(t)
	c, _ := tlsTokenClusterWith(t, 3, func(_ int, cfg *Config) { cfg.AdminAddr = "127.0.0.1:0" })
	leader := c.Leader(t)
	base := "https://" + leader.AdminAddr() + "/console/" // the API has TLS, so the admin listener has it too

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	api, err := client.New(ctx, c.Addrs(), client.WithTLS(leader.cfg.APIClientTLS), client.WithToken(adminToken))
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	if _, err := api.CreateQueue(ctx, "orders", client.QueueSettings{DeadLetterQueue: "orders-dlq"}, client.WithCreateDLQ()); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := api.Send(ctx, "orders", fmt.Appendf(nil, `{"order":%d}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	// Traffic on a second queue, so that its rate charts have something
	// to draw.
	trafficCtx, stopTraffic := context.WithCancel(ctx)
	trafficDone := make(chan struct{})
	go func() {
		defer close(trafficDone)
		for i := 0; trafficCtx.Err() == nil && i < 400; i++ {
			for range 3 + i%4 {
				api.Send(trafficCtx, "payments", []byte("pay"))
			}
			if msgs, err := api.Receive(trafficCtx, "payments", 2+i%3); err == nil {
				for _, m := range msgs {
					api.Ack(trafficCtx, "payments", m.Receipt)
				}
			}
			select {
			case <-trafficCtx.Done():
			case <-time.After(150 * time.Millisecond):
			}
		}
	}()
	defer func() { stopTraffic(); <-trafficDone }()

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.WindowSize(1366, 900), chromedp.DisableGPU,
		// The cluster's certificates come from a CA the test made a moment
		// ago, which this browser profile does not know.
		chromedp.Flag("ignore-certificate-errors", true))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	// run runs steps, bounded by the test's deadline (the browser itself
	// lives on bctx: a timeout on the first run would stop it).
	run := func(steps ...chromedp.Action[chromedp.Void]) error {
		if err := chromedp.Do(bctx); err != nil { // start the browser
			return err
		}
		rctx, rcancel := context.WithTimeout(bctx, time.Until(deadline(ctx)))
		defer rcancel()
		return chromedp.Do(rctx, steps...)
	}

	shot := func(name string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			png, err := chromedp.FullScreenshot(100)(ctx, tg)
			if err != nil {
				return err
			}
			p := filepath.Join(shots, name+".png")
			t.Logf("screenshot %s", p)
			return os.WriteFile(p, png, 0o644)
		})
	}
	// text waits (up to 12 s: the page refreshes itself every 3 s) until
	// the first element sel matches has the text want.
	text := func(sel, want string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			var got string
			var err error
			js := fmt.Sprintf(`(document.querySelector(%q) || {textContent: %q}).textContent.trim()`, sel, "(no "+sel+")")
			for end := time.Now().Add(12 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
				if got, err = chromedp.Evaluate[string](js)(ctx, tg); err == nil && got == want {
					return nil
				}
			}
			if err != nil {
				return fmt.Errorf("%s: %w", sel, err)
			}
			return fmt.Errorf("%s shows %q, want %q", sel, got, want)
		})
	}
	login := func(token string) chromedp.Action[chromedp.Void] {
		return chromedp.Steps(
			chromedp.Navigate(base),
			chromedp.WaitVisible(chromedp.ID("token")),
			chromedp.SendKeys(chromedp.ID("token"), token),
			chromedp.Click(chromedp.ID("login")),
			chromedp.WaitVisible(chromedp.ID("queues")),
		)
	}
	ready := `tr[data-queue="orders"] td.ready`

	// The queues page shows the queue after the sends.
	if err := run(chromedp.Navigate(base), chromedp.WaitVisible(chromedp.ID("token")), shot("login"),
		login(adminToken), text(ready, "20")); err != nil {
		t.Fatalf("queues page after 20 sends: %v", err)
	}

	// The depth follows receives, without a reload.
	msgs, err := api.Receive(ctx, "orders", 5)
	if err != nil || len(msgs) != 5 {
		t.Fatalf("receive 5: %d messages, %v", len(msgs), err)
	}
	if err := run(text(ready, "15"), text(`tr[data-queue="orders"] td[data-label="Leased"]`, "5")); err != nil {
		t.Fatalf("queues page after 5 receives: %v", err)
	}

	// Rejected messages become dead letters in orders-dlq; the queue
	// page's redrive, once confirmed, moves them back.
	var receipts []client.Receipt
	for _, m := range msgs {
		receipts = append(receipts, m.Receipt)
	}
	if err := api.Reject(ctx, "orders", "cannot parse", receipts...); err != nil {
		t.Fatal(err)
	}
	if err := run(text(`tr[data-queue="orders-dlq"] td.dead`, "5"), chromedp.Sleep(10*time.Second), shot("queues"),
		chromedp.Navigate(base+"queues/orders-dlq"), chromedp.WaitVisible(chromedp.ID("peek")), shot("queue-dlq"),
		chromedp.Navigate(base+"queues/orders"), chromedp.WaitVisible(chromedp.ID("redrive-dlq")),
		chromedp.Click(chromedp.ID("redrive-dlq")), chromedp.WaitVisible(chromedp.ID("confirm")), shot("confirm-redrive"),
		chromedp.Click(chromedp.ID("confirm")), chromedp.WaitVisible(chromedp.CSS(".banner.ok")),
		text(".banner.ok", "Redrove 5 dead letters out of orders-dlq."), text("#ready", "20"), shot("queue")); err != nil {
		t.Fatalf("redrive from the queue page: %v", err)
	}
	if q, err := api.GetQueue(ctx, "orders-dlq"); err != nil || q.Stats.DeadLettered != 0 {
		t.Fatalf("orders-dlq after the redrive: %+v, %v; want no dead letters", q, err)
	}

	if err := run(chromedp.Navigate(base+"cluster"), chromedp.WaitVisible(chromedp.ID("nodes")),
		text("#nodes .badge.leader", "★ leader"), shot("cluster"),
		chromedp.EmulateViewport(390, 844), chromedp.Navigate(base), chromedp.WaitVisible(chromedp.ID("queues")), shot("queues-phone"),
		chromedp.EmulateViewport(1366, 900)); err != nil {
		t.Fatalf("cluster page: %v", err)
	}

	// A read-only token sees the dead letters but gets no button to act.
	more, err := api.Receive(ctx, "orders", 2)
	if err != nil || len(more) != 2 {
		t.Fatalf("receive 2: %d, %v", len(more), err)
	}
	if err := api.Reject(ctx, "orders", "still broken", more[0].Receipt, more[1].Receipt); err != nil {
		t.Fatal(err)
	}
	if err := run(chromedp.Click(chromedp.CSS("header form button")), chromedp.WaitVisible(chromedp.ID("token")),
		login(readToken), text("#scope", "read token"), text(`tr[data-queue="orders-dlq"] td.dead`, "2"),
		chromedp.Navigate(base+"queues/orders"), chromedp.WaitVisible(chromedp.ID("readonly")),
		shot("queue-readonly")); err != nil {
		t.Fatalf("read-only token: %v", err)
	}
	buttons, err := chromedp.Run(bctx, chromedp.Evaluate[int](`document.querySelectorAll("#actions, #purge, #send, #redrive-dlq, #redrive-here, main form[method=post]").length`))
	if err != nil {
		t.Fatal(err)
	}
	if buttons != 0 {
		t.Fatalf("a read-only token's queue page has %d action forms or buttons, want none", buttons)
	}
}

// deadline is ctx's deadline (ctx must have one).
func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}
