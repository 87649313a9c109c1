package deploy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
)

// TestComposeCluster builds the static binary and the FROM scratch image,
// starts deploy/docker-compose.yml, walks through the CLI inside the
// containers, stops the leader's container and keeps working, and tears
// everything down (containers, volumes, network, image) on every exit
// path. It skips when no Docker engine or docker-compose is available.
func TestComposeCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("compose test skipped in -short mode (it builds an image and starts three containers)")
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("no Docker engine reachable (docker info: %v: %s); the compose test needs one", err, bytes.TrimSpace(out))
	}
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Skip("docker-compose not installed (Debian package docker-compose); the compose test needs it")
	}
	_, self, _, _ := runtime.Caller(0)
	deployDir := filepath.Dir(self)

	suffix := make([]byte, 4)
	rand.Read(suffix)
	id := hex.EncodeToString(suffix)
	project, image := "qqdeploy"+id, "quorumq-deploytest:"+id

	// Build context: the Dockerfile, its rootfs and a static binary.
	buildCtx := t.TempDir()
	cp(t, filepath.Join(deployDir, "Dockerfile"), filepath.Join(buildCtx, "Dockerfile"))
	if err := os.MkdirAll(filepath.Join(buildCtx, "rootfs", "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	cp(t, filepath.Join(deployDir, "rootfs", "data", ".keep"), filepath.Join(buildCtx, "rootfs", "data", ".keep"))
	if err := harness.BuildBinary(filepath.Join(buildCtx, "quorumq"), []string{"CGO_ENABLED=0"}, "-trimpath", "-ldflags=-s -w"); err != nil {
		t.Fatalf("static build: %v", err)
	}
	run(t, 2*time.Minute, "docker", "build", "-q", "-t", image, buildCtx)
	t.Cleanup(func() { runQuiet(2*time.Minute, "docker", "rmi", "-f", image) })

	compose := func(timeout time.Duration, args ...string) (string, error) {
		full := append([]string{"-p", project, "-f", filepath.Join(deployDir, "docker-compose.yml")}, args...)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "docker-compose", full...)
		cmd.Env = append(os.Environ(), "QUORUMQ_IMAGE="+image)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		if t.Failed() {
			if logs, _ := compose(time.Minute, "logs", "--no-color", "--tail", "40"); logs != "" {
				t.Logf("container logs:\n%s", logs)
			}
		}
		if out, err := compose(2*time.Minute, "down", "-v", "--remove-orphans", "-t", "5"); err != nil {
			t.Errorf("docker-compose down: %v\n%s", err, out)
		}
	})
	if out, err := compose(2*time.Minute, "up", "-d"); err != nil {
		t.Fatalf("docker-compose up: %v\n%s", err, out)
	}

	const addrs = "n1:7101,n2:7101,n3:7101"
	cli := func(node string, args ...string) (string, error) {
		full := append([]string{"exec", "-T", node, "/quorumq"}, args...)
		full = append(full, "--addr", addrs, "--timeout", "20s")
		return compose(40*time.Second, full...)
	}
	mustCLI := func(node string, args ...string) string {
		t.Helper()
		out, err := cli(node, args...)
		if err != nil {
			t.Fatalf("quorumq %s (in %s): %v\n%s", strings.Join(args, " "), node, err, out)
		}
		return out
	}

	// The three servers find each other and elect a leader.
	var st struct {
		LeaderID string       `json:"leader_id"`
		Nodes    []nodeStatus `json:"nodes"`
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := cli("n1", "status", "--json")
		if err == nil && json.Unmarshal([]byte(out), &st) == nil && st.LeaderID != "" && len(st.Nodes) == 3 && healthy(st.Nodes) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no three-node cluster with a leader within 60 s; last status: %v\n%s", err, out)
		}
		time.Sleep(time.Second)
	}
	t.Logf("cluster up, leader %s", st.LeaderID)

	// The walk-through of the README, run where the servers' advertised
	// names resolve.
	mustCLI("n1", "queue", "create", "jobs", "--visibility", "30s")
	mustCLI("n2", "send", "jobs", "one", "--dedup-id", "job-1")
	mustCLI("n3", "send", "jobs", "one", "--dedup-id", "job-1") // a dedup hit: still one message
	mustCLI("n1", "send", "jobs", "two", "--dedup-id", "job-2")
	if out := mustCLI("n2", "recv", "jobs", "--ack", "--json"); !strings.Contains(out, `"body": "one"`) {
		t.Fatalf("recv printed %s, want message one", out)
	}

	// Metrics from the published admin port of a container.
	port, err := compose(30*time.Second, "port", "n1", "7401")
	if err != nil {
		t.Fatalf("docker-compose port: %v %s", err, port)
	}
	metrics := httpBody(t, "http://"+strings.TrimSpace(port)+"/metrics")
	for _, want := range []string{`quorumq_queue_enqueued_total{queue="jobs"} 2`, `quorumq_queue_dedup_hits_total{queue="jobs"} 1`, `quorumq_queue_acked_total{queue="jobs"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("n1 /metrics lacks %q", want)
		}
	}

	// Stop the leader's container: the other two elect a leader and keep
	// serving, with every acknowledged write.
	if out, err := compose(time.Minute, "stop", "-t", "20", st.LeaderID); err != nil {
		t.Fatalf("stop %s: %v\n%s", st.LeaderID, err, out)
	}
	other := "n1"
	if st.LeaderID == "n1" {
		other = "n2"
	}
	mustCLI(other, "send", "jobs", "three", "--dedup-id", "job-3")
	out := mustCLI(other, "recv", "jobs", "--max", "10", "--ack", "--json")
	if !strings.Contains(out, `"body": "two"`) || !strings.Contains(out, `"body": "three"`) {
		t.Fatalf("after stopping %s, recv printed %s; want two and three", st.LeaderID, out)
	}
	status := mustCLI(other, "status")
	t.Logf("status with %s stopped:\n%s", st.LeaderID, status)
}

// nodeStatus is the part of `quorumq status --json` this test reads.
type nodeStatus struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Error string `json:"error"`
}

func healthy(nodes []nodeStatus) bool {
	for _, n := range nodes {
		if n.Error != "" || (n.State != "Leader" && n.State != "Follower") {
			return false
		}
	}
	return true
}

func httpBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	return b.String()
}

func run(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func runQuiet(timeout time.Duration, name string, args ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_ = exec.CommandContext(ctx, name, args...).Run()
}

func cp(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
