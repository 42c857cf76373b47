package agent

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
)

func TestRejectionNamesTheAttributeWithoutTheValue(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name        string
		err         *crm.Error
		wantSubject string // "" = not a value rejection
		wantIn      []string
		wantOut     []string
	}{
		{name: "string too long",
			err: &crm.Error{Status: 400, Class: crm.ClassRejected, Code: "0x80044331",
				Message: "A validation error occurred.  The length of the 'firstname' attribute of the 'contact' entity exceeded the maximum allowed length of '50'."},
			wantSubject: "firstname", wantIn: []string{"0x80044331", "maximum allowed length of '50'"}},
		{name: "number out of range keeps no value",
			err: &crm.Error{Status: 400, Class: crm.ClassRejected, Code: "0x80044330",
				Message: "A validation error occurred for msemr_observation.msemr_valuequantity. The value 123456789012 of type System.Decimal is outside the valid range(-100000000000 to 100000000000)."},
			wantSubject: "msemr_valuequantity", wantIn: []string{"0x80044330", "The value … of type System.Decimal"}, wantOut: []string{"123456789012"}},
		{name: "choice out of range, upper-case code",
			err: &crm.Error{Status: 400, Class: crm.ClassRejected, Code: "0x8004431A",
				Message: "A validation error occurred. The value 7 of 'gendercode' on record of type 'contact' is outside the valid range. Accepted Values: 1,2"},
			wantSubject: "gendercode", wantOut: []string{"value 7 "}},
		{name: "another 400 is left to the general rule",
			err: &crm.Error{Status: 400, Class: crm.ClassRejected, Code: "0x80048d19", Message: "Error identified in Payload"}},
		{name: "a conflict is not a value rejection",
			err: &crm.Error{Status: 412, Class: crm.ClassConflict, Code: "0x80044331", Message: "The length of the 'x' attribute"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := rejection(classify(tc.err))
			if tc.wantSubject == "" {
				if st != nil {
					t.Fatalf("got %+v, want nil", st)
				}
				return
			}
			if st == nil {
				t.Fatal("got nil")
			}
			if st.outcome != logs.OutcomeDeadLettered || st.reason != "target_rejected" || st.subject != tc.wantSubject || !IsPermanent(st.err) {
				t.Errorf("got %s/%s subject %q permanent %v", st.outcome, st.reason, st.subject, IsPermanent(st.err))
			}
			if !errors.Is(st.err, tc.err) && !strings.Contains(st.err.Error(), tc.err.Code) {
				t.Errorf("the CRM error is lost: %v", st.err)
			}
			for _, s := range tc.wantIn {
				if !strings.Contains(st.message, s) {
					t.Errorf("message %q lacks %q", st.message, s)
				}
			}
			for _, s := range tc.wantOut {
				if strings.Contains(st.message, s) {
					t.Errorf("message %q carries %q", st.message, s)
				}
			}
		})
	}
}

type countingDefiner struct {
	calls int
	err   error
}

func (c *countingDefiner) EntityDefinition(_ context.Context, name string) (*crm.EntityMetadata, error) {
	c.calls++
	if c.err != nil {
		return nil, c.err
	}
	two, ten, own, currency := 2, 10, 0, 2
	return &crm.EntityMetadata{LogicalName: name, Attributes: map[string]*crm.AttributeMetadata{
		"amount":   {LogicalName: "amount", Type: "Money", Precision: &two, PrecisionSource: &own},
		"price":    {LogicalName: "price", Type: "Money", Precision: &two, PrecisionSource: &currency},
		"quantity": {LogicalName: "quantity", Type: "Decimal", Precision: &ten},
	}}, nil
}

func TestPrecisionsSettle(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name        string
		record, cur map[string]any // cur nil: a create
		changed     []string
		wantChanged []string
		wantRounded []string
	}{
		{name: "rounded value equal at precision is unchanged",
			record: map[string]any{"amount": json.Number("19.999")}, cur: map[string]any{"amount": json.Number("20.00")},
			changed: []string{"amount"}, wantChanged: []string{}, wantRounded: []string{"amount"}},
		{name: "rounded value that differs still changes",
			record: map[string]any{"amount": json.Number("21.999")}, cur: map[string]any{"amount": json.Number("20.00")},
			changed: []string{"amount"}, wantChanged: []string{"amount"}, wantRounded: []string{"amount"}},
		{name: "value that fits is compared as before",
			record: map[string]any{"quantity": json.Number("1.5")}, cur: map[string]any{"quantity": json.Number("1.25")},
			changed: []string{"quantity"}, wantChanged: []string{"quantity"}},
		{name: "money in the currency's precision is not known from the column",
			record: map[string]any{"price": json.Number("1.239")}, cur: map[string]any{"price": json.Number("1.24")},
			changed: []string{"price"}, wantChanged: []string{"price"}},
		{name: "a create notes the rounding",
			record: map[string]any{"quantity": json.Number("0.123456789012")}, changed: []string{"quantity"},
			wantChanged: []string{"quantity"}, wantRounded: []string{"quantity"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := &precisions{api: &countingDefiner{}, ttl: time.Minute, now: time.Now, cache: map[string]precisionEntry{}}
			res := &maps.CRMResult{Record: tc.record, Changed: slices.Clone(tc.changed)}
			var cur *maps.CRMState
			if tc.cur != nil {
				cur = &maps.CRMState{Record: tc.cur}
			}
			rounded := p.settle(context.Background(), "x", res, cur)
			if !slices.Equal(res.Changed, tc.wantChanged) && !(len(res.Changed) == 0 && len(tc.wantChanged) == 0) {
				t.Errorf("changed %v, want %v", res.Changed, tc.wantChanged)
			}
			if !slices.Equal(rounded, tc.wantRounded) {
				t.Errorf("rounded %v, want %v", rounded, tc.wantRounded)
			}
		})
	}
}

func TestPrecisionsReadMetadataOnce(t *testing.T) {
	t.Parallel()
	for _, fail := range []bool{false, true} {
		d := &countingDefiner{}
		if fail {
			d.err = errors.New("403")
		}
		p := &precisions{api: d, ttl: 10 * time.Minute, now: time.Now, cache: map[string]precisionEntry{}}
		for range 5 {
			p.placesOf(context.Background(), "contact")
		}
		if d.calls != 1 {
			t.Errorf("failing %v: %d metadata reads for 5 messages, want 1", fail, d.calls)
		}
	}
}
