package agent

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestRetryClassificationSurvivesWrapping(t *testing.T) {
	t.Parallel()
	base := errors.New("boom")
	tests := []struct {
		name      string
		err       error
		permanent bool
		after     time.Duration
	}{
		{name: "plain", err: base},
		{name: "permanent", err: Permanent(base), permanent: true},
		{name: "wrapped permanent", err: fmt.Errorf("upserting contact 1: %w", Permanent(base)), permanent: true},
		{name: "retry after", err: RetryAfter(7*time.Second, base), after: 7 * time.Second},
		{name: "wrapped retry after", err: fmt.Errorf("x: %w", RetryAfter(3*time.Second, base)), after: 3 * time.Second},
		{name: "a lost race marked permanent is still retried", err: Permanent(&endpointError{class: classConflict, status: 412, err: base})},
		{name: "a wrapped 409", err: fmt.Errorf("writing: %w", Permanent(&endpointError{class: classConflict, status: 409, err: base}))},
		{name: "a permanent 400 stays permanent", err: Permanent(&endpointError{class: classRejected, status: 400, err: base}), permanent: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := IsPermanent(tt.err); got != tt.permanent {
				t.Errorf("IsPermanent = %v, want %v", got, tt.permanent)
			}
			got, ok := retryAfterOf(tt.err)
			if ok != (tt.after > 0) || got != tt.after {
				t.Errorf("retryAfterOf = %v,%v want %v", got, ok, tt.after)
			}
			if !errors.Is(tt.err, base) {
				t.Error("classification hides the cause")
			}
		})
	}
	if Permanent(nil) != nil || RetryAfter(time.Second, nil) != nil {
		t.Error("classifying nil must stay nil")
	}
}

func TestBackoffGrowsWithJitterAndHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		rand    float64
		attempt int
		err     error
		want    time.Duration
	}{
		{name: "first attempt low jitter", rand: 0, attempt: 1, want: 500 * time.Millisecond},
		{name: "first attempt high jitter", rand: 0.999999, attempt: 1, want: 999999 * time.Microsecond},
		{name: "doubles", rand: 0, attempt: 3, want: 2 * time.Second},
		{name: "capped", rand: 0, attempt: 30, want: 5 * time.Second},
		{name: "retry-after longer wins", rand: 0, attempt: 1, err: RetryAfter(42*time.Second, errors.New("429")), want: 42 * time.Second},
		{name: "retry-after shorter loses", rand: 0, attempt: 4, err: RetryAfter(time.Millisecond, errors.New("429")), want: 4 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := Backoff{Base: time.Second, Max: 10 * time.Second, rand: func() float64 { return tt.rand }}
			got := b.Delay(tt.attempt, tt.err)
			if d := got - tt.want; d < -time.Microsecond || d > time.Microsecond {
				t.Fatalf("Delay(%d) = %v, want %v", tt.attempt, got, tt.want)
			}
		})
	}
}
