// Package browsertest runs browser tests against the admin app in Debian's
// chromium, driven by chromedp: headless, without a sandbox, with a fresh
// profile and with every background network feature off, so a test talks
// only to the servers it starts.
//
// When chromium is missing the test is skipped with a message saying how to
// install it, unless FHIRSYNC_CI=1, in which case it fails.
package browsertest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/target"
	"github.com/chromedp/chromedp"
)

// ChromiumPath is where Debian's chromium package installs the browser.
const ChromiumPath = "/usr/bin/chromium"

// Browser is one chromium process for one test.
type Browser struct {
	ctx context.Context // the first tab; it owns the process
	out *lockedBuffer
}

// Start launches chromium for t and stops it when t ends.
func Start(t testing.TB) *Browser {
	t.Helper()
	if _, err := os.Stat(ChromiumPath); err != nil {
		if os.Getenv("FHIRSYNC_CI") == "1" {
			t.Fatalf("chromium is required in CI but %s is missing: apt-get install chromium", ChromiumPath)
		}
		t.Skipf("browser test skipped: %s is missing (install Debian's chromium: apt-get install chromium)", ChromiumPath)
	}
	// The profile is removed by hand after chromium stops: its helper
	// processes may still be flushing files for a moment, which would fail
	// t.TempDir's strict cleanup.
	profile, err := os.MkdirTemp("", "fhirsync-chromium-")
	if err != nil {
		t.Fatalf("creating a chromium profile directory: %v", err)
	}
	out := &lockedBuffer{}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(ChromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.DisableGPU,
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-breakpad", true),
		chromedp.Flag("disable-features", "Translate,OptimizationHints,MediaRouter"),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.Flag("use-mock-keychain", true),
		chromedp.CombinedOutput(out),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		if t.Failed() && out.Len() > 0 {
			t.Logf("chromium output:\n%s", out.String())
		}
		var rmErr error
		for range 50 {
			if rmErr = os.RemoveAll(profile); rmErr == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("leaving chromium profile %s behind: %v", profile, rmErr)
	})
	// The first Run starts the browser and binds it to ctx, so it must not
	// run under a shorter-lived context; a timer stops a start that hangs.
	hung := time.AfterFunc(60*time.Second, cancel)
	err = chromedp.Run(ctx)
	hung.Stop()
	if err != nil {
		t.Fatalf("starting chromium: %v\n%s", err, out.String())
	}
	return &Browser{ctx: ctx, out: out}
}

// Session opens a tab in a new browser context: its own cookies and
// storage, as a separate user would have. It closes when t ends; every
// action in it must finish within timeout.
func (b *Browser) Session(t testing.TB, timeout time.Duration) context.Context {
	t.Helper()
	// New headless chromium cannot open a tab in a browser context that has
	// no window yet, so the target asks for its own window.
	exec := cdp.WithExecutor(b.ctx, chromedp.FromContext(b.ctx).Browser)
	bc, err := target.CreateBrowserContext().WithDisposeOnDetach(true).Do(exec)
	if err != nil {
		t.Fatalf("creating a browser context: %v", err)
	}
	id, err := target.CreateTarget("about:blank").WithBrowserContextID(bc).WithNewWindow(true).Do(exec)
	if err != nil {
		t.Fatalf("opening a tab: %v", err)
	}
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithTargetID(id))
	ctx = context.WithValue(ctx, browserContextKey{}, bc)
	ctx, cancelTimeout := context.WithTimeout(ctx, timeout)
	t.Cleanup(func() {
		cancelTimeout()
		cancel()
		_ = target.DisposeBrowserContext(bc).Do(exec)
	})
	return ctx
}

// browserContextKey holds a session's browser context id in its context.
type browserContextKey struct{}

// Download runs action (a click on a download link, say) in the session
// ctx and waits for the file it downloads into dir; it returns the
// file's path. The browser names the file by its download GUID.
func Download(ctx context.Context, dir string, action chromedp.Action) (string, error) {
	bc, ok := ctx.Value(browserContextKey{}).(cdp.BrowserContextID)
	if !ok {
		return "", fmt.Errorf("downloading: the context is not a browsertest session")
	}
	c := chromedp.FromContext(ctx)
	exec := cdp.WithExecutor(ctx, c.Browser)
	err := browser.SetDownloadBehavior(browser.SetDownloadBehaviorBehaviorAllowAndName).
		WithDownloadPath(dir).WithEventsEnabled(true).WithBrowserContextID(bc).Do(exec)
	if err != nil {
		return "", fmt.Errorf("allowing downloads: %w", err)
	}
	done := make(chan *browser.EventDownloadProgress, 1)
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	chromedp.ListenBrowser(lctx, func(ev any) {
		if p, ok := ev.(*browser.EventDownloadProgress); ok && (p.State == browser.DownloadProgressStateCompleted || p.State == browser.DownloadProgressStateCanceled) {
			select {
			case done <- p:
			default:
			}
		}
	})
	if err := chromedp.Run(ctx, action); err != nil {
		return "", err
	}
	select {
	case p := <-done:
		if p.State != browser.DownloadProgressStateCompleted {
			return "", fmt.Errorf("the download was canceled")
		}
		return filepath.Join(dir, p.GUID), nil
	case <-ctx.Done():
		return "", fmt.Errorf("waiting for the download: %w", ctx.Err())
	}
}

// PhoneWidth is the narrowest screen the admin app must work on: an
// iPhone SE/mini's 375 CSS pixels.
const PhoneWidth = 375

// Viewport emulates a screen width×height CSS pixels wide; mobile also
// turns on touch-screen behaviour and the meta viewport, as on a phone.
func Viewport(width, height int64, mobile bool) chromedp.Action {
	return emulation.SetDeviceMetricsOverride(width, height, 1, mobile)
}

// ScrollWidth is how wide the current page's content is, in CSS pixels:
// wider than the viewport means the page scrolls sideways.
func ScrollWidth(ctx context.Context) (int64, error) {
	var w int64
	err := chromedp.Run(ctx, chromedp.Evaluate(`document.scrollingElement.scrollWidth`, &w))
	return w, err
}

// Screenshot writes a PNG of the whole current page of ctx to path, for
// documentation and for looking at a failure.
func Screenshot(ctx context.Context, path string) error {
	var png []byte
	if err := chromedp.Run(ctx, chromedp.FullScreenshot(&png, 100)); err != nil {
		return fmt.Errorf("taking a screenshot: %w", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		return fmt.Errorf("writing screenshot: %w", err)
	}
	return nil
}

// ViewportScreenshot writes a PNG of what the viewport of ctx shows, for
// documentation of a phone-sized screen where the whole page is too long.
func ViewportScreenshot(ctx context.Context, path string) error {
	var png []byte
	if err := chromedp.Run(ctx, chromedp.CaptureScreenshot(&png)); err != nil {
		return fmt.Errorf("taking a screenshot: %w", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		return fmt.Errorf("writing screenshot: %w", err)
	}
	return nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
