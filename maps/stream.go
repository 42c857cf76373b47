package maps

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	"gopkg.in/yaml.v3"
)

// Stream puts an Observation entity map's device readings under control
// (docs/device-streams.md): instead of one CRM write per reading, the
// readings of each patient and code are gathered in windows, and each
// window sends at most one aggregate — a synthetic Observation carrying
// the window's statistics — through the entity map's attribute maps.
//
// Readings that are not sent each way are counted, never logged one by
// one: the sync log keeps one decision per window and key with its
// counts (logs.Decision.Readings).
type Stream struct {
	// Window is the length of an aggregation window: readings are grouped
	// by the time the agent takes them, in windows aligned to multiples of
	// Window since the Unix epoch (so every replica agrees on them).
	// Required, 1s to 24h.
	Window Duration `yaml:"window"`
	// Aggregate is the statistic the window's synthetic Observation
	// carries as valueQuantity.value: latest (default), min, max or mean.
	// All four travel as extensions (StreamExtension) either way.
	Aggregate Aggregate `yaml:"aggregate,omitempty"`
	// Threshold, when set, sends a window only when one of its readings
	// lies outside [Low, High]; a window whose readings all lie inside is
	// decided within_range and nothing is written.
	Threshold *Threshold `yaml:"threshold,omitempty"`
	// DropRepeats drops a reading whose value and unit equal the key's
	// previous reading's (a device repeating itself): it is counted as
	// duplicate_reading and left out of the statistics. The same reading
	// delivered again (same id and version) is always dropped.
	DropRepeats bool `yaml:"dropRepeats,omitempty"`
	// RateLimit, when set, caps the aggregates sent per patient; a window
	// beyond the cap is decided rate_limited and nothing is written.
	RateLimit *RateLimit `yaml:"rateLimit,omitempty"`
}

// Aggregate names a window statistic.
type Aggregate string

// Window statistics.
const (
	AggregateLatest Aggregate = "latest" // the reading with the latest effective time (default)
	AggregateMin    Aggregate = "min"    // the smallest value
	AggregateMax    Aggregate = "max"    // the largest value
	AggregateMean   Aggregate = "mean"   // the arithmetic mean of the values kept
)

// OrDefault returns a, or latest when a is empty.
func (a Aggregate) OrDefault() Aggregate {
	if a == "" {
		return AggregateLatest
	}
	return a
}

// Threshold is a normal range: values inside it are not worth sending.
// Either bound may be omitted (open).
type Threshold struct {
	Low  *float64 `yaml:"low,omitempty"`
	High *float64 `yaml:"high,omitempty"`
}

// Outside reports whether v lies outside the range.
func (t *Threshold) Outside(v float64) bool {
	return (t.Low != nil && v < *t.Low) || (t.High != nil && v > *t.High)
}

// RateLimit caps the aggregates sent per patient in each period (aligned
// to multiples of Per since the Unix epoch).
type RateLimit struct {
	Sends int      `yaml:"sends"`
	Per   Duration `yaml:"per"`
}

// StreamExtension is the URL of the extension that carries statistic s
// on a window's synthetic Observation (valueDecimal; count is
// valueInteger), for attribute maps to read with
// extension('urn:fhirsync:stream:max').valueDecimal.
func StreamExtension(s string) string { return "urn:fhirsync:stream:" + s }

// Duration is a time.Duration written as Go duration text ("5m", "1h30m")
// in YAML and JSON.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalYAML writes d as duration text.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// UnmarshalYAML reads duration text.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	return d.parse(s)
}

// MarshalJSON writes d as duration text.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads duration text.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	return d.parse(s)
}

func (d *Duration) parse(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: write it as 30s, 5m or 1h", s)
	}
	*d = Duration(v)
	return nil
}

// stream checks an entity map's stream section.
func (c *compiler) stream(def *EntityMap) {
	s := def.Stream
	if s == nil {
		return
	}
	at := withField(Problem{Map: def.Name}, "stream")
	field := func(f string) Problem { return withField(Problem{Map: def.Name}, "stream."+f) }
	if def.FHIRType != "Observation" {
		c.ps.add(at, "a stream needs fhirType Observation, not %q", def.FHIRType)
	}
	if def.CRMToFHIR.Enabled {
		c.ps.add(at, "a stream map sends aggregates one way: turn crmToFHIR off")
	}
	if w := s.Window.D(); w < time.Second || w > 24*time.Hour {
		c.ps.add(field("window"), "window must be between 1s and 24h, got %s", w)
	} else if w%time.Second != 0 {
		c.ps.add(field("window"), "window must be whole seconds, got %s", w)
	}
	switch s.Aggregate {
	case "", AggregateLatest, AggregateMin, AggregateMax, AggregateMean:
	default:
		c.ps.add(field("aggregate"), "unknown aggregate %q (latest, min, max, mean)", s.Aggregate)
	}
	if t := s.Threshold; t != nil {
		switch {
		case t.Low == nil && t.High == nil:
			c.ps.add(field("threshold"), "a threshold needs low, high or both")
		case t.Low != nil && (math.IsNaN(*t.Low) || math.IsInf(*t.Low, 0)), t.High != nil && (math.IsNaN(*t.High) || math.IsInf(*t.High, 0)):
			c.ps.add(field("threshold"), "threshold bounds must be finite numbers")
		case t.Low != nil && t.High != nil && *t.Low > *t.High:
			c.ps.add(field("threshold"), "threshold low %v is above high %v", *t.Low, *t.High)
		}
	}
	if r := s.RateLimit; r != nil {
		if r.Sends < 1 {
			c.ps.add(field("rateLimit.sends"), "rateLimit.sends must be at least 1")
		}
		if p := r.Per.D(); p < time.Second || p > 7*24*time.Hour || p%time.Second != 0 {
			c.ps.add(field("rateLimit.per"), "rateLimit.per must be whole seconds between 1s and 168h, got %s", p)
		}
	}
}
