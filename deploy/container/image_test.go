package container

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/internal/freeport"
)

// TestContainerImage builds the image the way CI can — FROM scratch, no
// registry (build-offline.sh) — and runs `fhirsync demo` in it the way the
// docs say to run the published one: user 65532, read-only root filesystem,
// a volume for the data directory, a tmpfs for /tmp. It passes when /readyz
// answers 200 on loopback, the image's HEALTHCHECK reports healthy, and the
// process really runs as 65532 on a read-only root.
func TestContainerImage(t *testing.T) {
	podman, err := exec.LookPath("podman")
	if err != nil {
		msg := "podman is not installed (apt-get install podman runc): the image is not built or run here; TestDockerfile still checks the Dockerfile"
		if os.Getenv("FHIRSYNC_CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if testing.Short() {
		t.Skip("-short: building the image takes a minute or more")
	}
	suffix := make([]byte, 4)
	_, _ = crand.Read(suffix)
	id := hex.EncodeToString(suffix)
	tag := "localhost/fhirsync-test:" + id
	name, volume := "fhirsync-test-"+id, "fhirsync-test-data-"+id

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	podIn := func(ctx context.Context, args ...string) (string, error) {
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, podman, append(podmanGlobal(), args...)...)
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	pod := func(args ...string) (string, error) { return podIn(ctx, args...) }
	// Cleanups run after ctx is cancelled; they get a context of their own.
	cleanup := func(args ...string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := podIn(ctx, args...); err != nil {
			t.Logf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	// Build.
	start := time.Now()
	build := exec.CommandContext(ctx, "deploy/container/build-offline.sh", tag)
	build.Dir = "../.."
	build.Env = append(os.Environ(), "BUILDER="+podman, "VERSION=container-test")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build-offline.sh: %v\n%s", err, out)
	}
	t.Logf("image built in %s (binary and image)", time.Since(start).Round(time.Second))
	t.Cleanup(func() { cleanup("rmi", "--force", tag) })

	// The image's configuration.
	out, err := pod("image", "inspect", tag)
	if err != nil {
		t.Fatalf("podman image inspect: %v\n%s", err, out)
	}
	var images []struct {
		Size   int64
		Config struct {
			User       string
			Entrypoint []string
			Volumes    map[string]struct{}
		}
		HealthCheck *struct{ Test []string } `json:"Healthcheck"`
	}
	if err := json.Unmarshal([]byte(out), &images); err != nil || len(images) != 1 {
		t.Fatalf("podman image inspect: %v\n%s", err, out)
	}
	img := images[0]
	t.Logf("image size %.1f MB", float64(img.Size)/1e6)
	if img.Config.User != "65532:65532" {
		t.Errorf("image user = %q, want 65532:65532", img.Config.User)
	}
	if _, ok := img.Config.Volumes["/var/lib/fhirsync"]; !ok {
		t.Errorf("image volumes = %v, want /var/lib/fhirsync", img.Config.Volumes)
	}
	if img.HealthCheck == nil || !strings.Contains(strings.Join(img.HealthCheck.Test, " "), "/usr/local/bin/fhirsync healthcheck") {
		t.Errorf("image health check = %+v, want fhirsync healthcheck (was the image built in the docker format?)", img.HealthCheck)
	}
	if img.Size > 80e6 {
		t.Errorf("image size %d bytes: more than the binary, CA certificates and zoneinfo should take", img.Size)
	}

	// Run the demo as the docs say, on a free loopback port of the host
	// network (no CNI or slirp needed).
	port := freePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if out, err := pod("volume", "create", volume); err != nil {
		t.Fatalf("podman volume create: %v\n%s", err, out)
	}
	t.Cleanup(func() { cleanup("volume", "rm", "--force", volume) })
	run := append([]string{"run", "--detach", "--name", name,
		"--network", "host", "--read-only", "--tmpfs", "/tmp",
		"--volume", volume + ":/var/lib/fhirsync",
		// The health check's default URL takes its port from FHIRSYNC_LISTEN.
		"--env", "FHIRSYNC_LISTEN=" + addr},
		ulimits()...)
	run = append(run, tag, "demo", "--listen", addr, "--data-dir", "/var/lib/fhirsync/demo", "--patients", "20", "--edits-per-second", "0.5")
	if out, err := pod(run...); err != nil {
		t.Fatalf("podman run: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			lctx, lcancel := context.WithTimeout(context.Background(), time.Minute)
			logs, _ := podIn(lctx, "logs", name)
			lcancel()
			t.Logf("container output:\n%s", logs)
		}
		cleanup("rm", "--force", "--time", "5", name)
	})

	if err := waitReady(ctx, "http://"+addr+"/readyz", 90*time.Second); err != nil {
		t.Fatal(err)
	}
	// The image's own HEALTHCHECK, run by podman inside the container.
	if out, err := pod("healthcheck", "run", name); err != nil {
		t.Errorf("podman healthcheck run: %v (want healthy)\n%s", err, out)
	}

	// Non-root and read-only, seen from the host.
	out, err = pod("inspect", "--format", "{{.State.Pid}}", name)
	if err != nil {
		t.Fatalf("podman inspect: %v\n%s", err, out)
	}
	pid := strings.TrimSpace(out)
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatalf("reading the container process's status: %v", err)
	}
	if uid := procField(string(status), "Uid:"); uid != "65532 65532 65532 65532" {
		t.Errorf("container process uids = %q, want 65532 (real, effective, saved, fs)", uid)
	}
	mounts, err := os.ReadFile("/proc/" + pid + "/mountinfo")
	if err != nil {
		t.Fatalf("reading the container's mounts: %v", err)
	}
	if opts := mountOptions(string(mounts), "/"); !strings.Contains(","+opts+",", ",ro,") {
		t.Errorf("container root filesystem mounted %q, want ro", opts)
	}
	if opts := mountOptions(string(mounts), "/var/lib/fhirsync"); !strings.Contains(","+opts+",", ",rw,") {
		t.Errorf("data volume mounted %q, want rw", opts)
	}

	// A stopped container's health check fails: the check is not vacuous.
	if out, err := pod("stop", "--time", "10", name); err != nil {
		t.Fatalf("podman stop: %v\n%s", err, out)
	}
	if err := waitReady(ctx, "http://"+addr+"/readyz", time.Second); err == nil {
		t.Error("/readyz still answers after the container stopped")
	}
}

// podmanGlobal returns the flags every podman call gets. runc is preferred
// where installed: Debian 12's crun refuses hosts whose cgroup v2 hierarchy
// is mounted beside v1 ("cgroups in hybrid mode not supported").
func podmanGlobal() []string {
	if _, err := exec.LookPath("runc"); err == nil {
		return []string{"--runtime", "runc"}
	}
	return nil
}

// ulimits keeps the container's limits within the caller's hard limits:
// podman asks for a million open files by default, which a root without
// CAP_SYS_RESOURCE (a container or VM host) is not allowed to set.
func ulimits() []string {
	var nofile syscall.Rlimit
	n := uint64(65536)
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &nofile); err == nil && nofile.Max < n {
		n = nofile.Max
	}
	return []string{"--ulimit", fmt.Sprintf("nofile=%d:%d", n, n), "--ulimit", "nproc=4096:4096"}
}

// freePort is a loopback port for the container to publish on (see
// internal/freeport).
func freePort(t *testing.T) int {
	t.Helper()
	port, err := freeport.Loopback()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func waitReady(ctx context.Context, url string, within time.Duration) error {
	deadline := time.Now().Add(within)
	client := &http.Client{Timeout: 2 * time.Second}
	last := "no answer"
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("GET %s did not answer 200 within %s; last: %s", url, within, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// procField returns a /proc/PID/status field's value, spaces normalised.
func procField(status, key string) string {
	for _, line := range strings.Split(status, "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			return strings.Join(strings.Fields(rest), " ")
		}
	}
	return ""
}

// mountOptions returns the per-mount options of the mount at point in a
// /proc/PID/mountinfo (field 5 is the mount point, field 6 its options).
func mountOptions(mountinfo, point string) string {
	opts := ""
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == point {
			opts = f[5] // the last mount on a point is the one in effect
		}
	}
	return opts
}
