package maps

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Signal turns an entity map into a care-coordination signal
// (docs/signals.md): a FHIR resource such as a Flag or a RiskAssessment
// raises a CRM activity (a task, a phone call, an appointment — the
// entity map's CRM entity) regarding the patient's contact, owned by a
// configured team or user, or by the contact's owner; the activity is
// closed when the signal is lowered. The activity's own columns (subject,
// description, scheduledend, prioritycode) come from the entity map's
// attribute maps, like any other target record.
//
// One activity per source resource: the agent finds it by the link it
// keeps and by the correlation alternate key, which holds the source's
// "Type_id" (SignalKey): a column of its own such as fhirsync_signalsource,
// so a Flag's task and a FHIR Task's task never share a key.
type Signal struct {
	// When is a FHIRPath boolean that must hold for the signal to be
	// raised (e.g. status = 'active'); omitted means always.
	When string `yaml:"when,omitempty"`
	// EndsAt, when set, is a FHIRPath to a date or dateTime (period.end):
	// once it is in the past the signal is lowered.
	EndsAt string `yaml:"endsAt,omitempty"`
	// Probability raises the signal when the largest number its path
	// selects is at least AtLeast (prediction.probabilityDecimal).
	Probability *ProbabilityThreshold `yaml:"probability,omitempty"`
	// Risk raises the signal when a code its path selects is one of
	// Codes (prediction.qualitativeRisk.coding.code). With both
	// Probability and Risk, either suffices; with neither, When and
	// EndsAt alone decide.
	Risk *RiskCodes `yaml:"risk,omitempty"`
	// Patient is a FHIRPath to the patient's reference (omitted:
	// subject.reference) and PatientMap the entity map that links patients
	// to contacts: with owner.patient, the activity is owned by the
	// contact's owner. (The activity's regarding lookup is an ordinary
	// attribute map: crmAttribute regardingobjectid, action lookup through
	// the patient map, navigation regardingobjectid_contact_task.)
	Patient    string `yaml:"patient,omitempty"`
	PatientMap string `yaml:"patientMap,omitempty"`
	// Owner says who owns the activity.
	Owner SignalOwner `yaml:"owner"`
	// Close is the state and status the activity is closed with;
	// Open those it is opened (and reopened) with. Omitted: the task
	// table's values (closed: statecode 1 Completed, statuscode 5; open:
	// statecode 0 Open, statuscode 2 Not Started).
	Close *ActivityState `yaml:"close,omitempty"`
	Open  *ActivityState `yaml:"open,omitempty"`
	// Reopen true reopens a closed activity when its signal is raised
	// again; false (default) leaves a closed activity closed and
	// creates nothing new (a coordinator closed it, or it was lowered).
	Reopen bool `yaml:"reopen,omitempty"`
}

// ProbabilityThreshold is a numeric risk threshold.
type ProbabilityThreshold struct {
	Path    string  `yaml:"path"`
	AtLeast float64 `yaml:"atLeast"`
}

// RiskCodes is a qualitative risk threshold.
type RiskCodes struct {
	Path  string   `yaml:"path"`
	Codes []string `yaml:"codes,flow"`
}

// SignalOwner names the activity's owner: a team, a user, or (Patient)
// the owner of the patient's contact. Exactly one is set.
type SignalOwner struct {
	Team    string `yaml:"team,omitempty"`
	User    string `yaml:"user,omitempty"`
	Patient bool   `yaml:"patient,omitempty"`
}

// ActivityState is a Dataverse statecode and statuscode pair.
type ActivityState struct {
	State  int `yaml:"statecode" json:"statecode"`
	Status int `yaml:"statuscode" json:"statuscode"`
}

// Task table state and status values as Microsoft documents them for the
// task table (Power Apps Dataverse table reference, "Task": StateCode 0
// Open, 1 Completed, 2 Canceled; StatusCode 2 Not Started, 3 In Progress,
// 4 Waiting on someone else, 7 Deferred for Open; 5 Completed; 6
// Canceled).
var (
	TaskOpen   = ActivityState{State: 0, Status: 2}
	TaskClosed = ActivityState{State: 1, Status: 5}
)

// CloseState is the state the activity is closed with.
func (s *Signal) CloseState() ActivityState {
	if s.Close != nil {
		return *s.Close
	}
	return TaskClosed
}

// OpenState is the state the activity is opened or reopened with.
func (s *Signal) OpenState() ActivityState {
	if s.Open != nil {
		return *s.Open
	}
	return TaskOpen
}

// SignalKey is the correlation value of a signal's activity: the source's
// type and id joined by an underscore, which no FHIR id holds ([A-Za-z0-9
// -.]) and Dataverse allows in an alternate key value (unlike "/", which
// its Web API refuses in key values; "Define alternate keys to reference
// rows", Microsoft Learn). At most 80 characters.
func SignalKey(fhirType, id string) string { return fhirType + "_" + id }

// compiledSignal holds a signal's compiled expressions.
type compiledSignal struct {
	def     *Signal
	when    fhirExpr
	endsAt  *exprList
	prob    *exprList
	risk    *exprList
	patient *exprList
}

// exprList evaluates to every value an expression selects.
type exprList struct{ e fhirpathExpr }

func compileList(expr string) (*exprList, error) {
	e, err := compileFHIRPath(expr)
	if err != nil {
		return nil, err
	}
	return &exprList{e: e.(fhirpathExpr)}, nil
}

func (l *exprList) values(res map[string]any) ([]any, error) { return l.e.e.EvalResource(res) }

// SignalState is a signal's evaluation on one resource.
type SignalState struct {
	// Raised reports whether the activity should be open.
	Raised bool
	// Why says, without values from the record, what decided it (for the
	// sync log): "when is false", "ended", "probability below 0.7", ...
	Why string
	// Patient is the patient's reference (Patient/123); empty if none.
	Patient string
}

// Signal evaluates the map's signal section on res at now; ok is false
// when the map has none.
func (m *Mapping) Signal(res map[string]any, now time.Time) (st SignalState, ok bool, err error) {
	cs := m.signal
	if cs == nil {
		return SignalState{}, false, nil
	}
	pv, err := cs.patient.values(res)
	if err != nil {
		return st, true, fmt.Errorf("signal.patient: %w", err)
	}
	if len(pv) > 0 {
		st.Patient, _ = pv[0].(string)
	}
	if cs.when != nil {
		ok, err := cs.when.evalBool(res)
		if err != nil {
			return st, true, fmt.Errorf("signal.when: %w", err)
		}
		if !ok {
			st.Why = "its condition (when) is false"
			return st, true, nil
		}
	}
	if cs.endsAt != nil {
		vs, err := cs.endsAt.values(res)
		if err != nil {
			return st, true, fmt.Errorf("signal.endsAt: %w", err)
		}
		if len(vs) > 0 {
			s, _ := vs[0].(string)
			end, err := parseFHIRInstantEnd(s)
			if err != nil {
				return st, true, fmt.Errorf("signal.endsAt: %w", err)
			}
			if !now.Before(end) {
				st.Why = "it ended (endsAt is in the past)"
				return st, true, nil
			}
		}
	}
	def := cs.def
	if def.Probability == nil && def.Risk == nil {
		st.Raised = true
		return st, true, nil
	}
	var why []string
	if cs.prob != nil {
		vs, err := cs.prob.values(res)
		if err != nil {
			return st, true, fmt.Errorf("signal.probability.path: %w", err)
		}
		best := math.Inf(-1)
		for _, v := range vs {
			if f, ok := number(v); ok && f > best {
				best = f
			}
		}
		if best >= def.Probability.AtLeast {
			st.Raised = true
			return st, true, nil
		}
		why = append(why, fmt.Sprintf("no probability reaches %v", def.Probability.AtLeast))
	}
	if cs.risk != nil {
		vs, err := cs.risk.values(res)
		if err != nil {
			return st, true, fmt.Errorf("signal.risk.path: %w", err)
		}
		for _, v := range vs {
			if s, _ := v.(string); s != "" && slices.Contains(def.Risk.Codes, s) {
				st.Raised = true
				return st, true, nil
			}
		}
		why = append(why, "no qualitative risk is one of "+strings.Join(def.Risk.Codes, ", "))
	}
	st.Why = strings.Join(why, " and ")
	return st, true, nil
}

func number(v any) (float64, bool) {
	switch x := v.(type) {
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	case float64:
		return x, true
	case int:
		return float64(x), true
	case int64:
		return float64(x), true
	case string:
		f, err := strconv.ParseFloat(x, 64)
		return f, err == nil
	}
	return 0, false
}

// parseFHIRInstantEnd reads a FHIR date or dateTime as the instant its
// precision ends: 2016-12-01 ends at 2016-12-02T00:00Z (a period that
// ends on a day includes that day); a dateTime without a zone is UTC.
func parseFHIRInstantEnd(s string) (time.Time, error) {
	for _, l := range []struct {
		layout string
		next   func(time.Time) time.Time
	}{
		{time.RFC3339Nano, func(t time.Time) time.Time { return t }},
		{"2006-01-02T15:04:05", func(t time.Time) time.Time { return t }},
		{"2006-01-02", func(t time.Time) time.Time { return t.AddDate(0, 0, 1) }},
		{"2006-01", func(t time.Time) time.Time { return t.AddDate(0, 1, 0) }},
		{"2006", func(t time.Time) time.Time { return t.AddDate(1, 0, 0) }},
	} {
		if t, err := time.Parse(l.layout, s); err == nil {
			return l.next(t), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a FHIR date or dateTime", s)
}

// signal checks and compiles an entity map's signal section.
func (c *compiler) signal(set *Set, m *Mapping) {
	def := m.def
	s := def.Signal
	if s == nil {
		return
	}
	at := withField(Problem{Map: def.Name}, "signal")
	field := func(f string) Problem { return withField(Problem{Map: def.Name}, "signal."+f) }
	cs := &compiledSignal{def: s}
	if def.Stream != nil {
		c.ps.add(at, "a map is a stream or a signal, not both")
	}
	if def.CRMToFHIR.Enabled {
		c.ps.add(at, "a signal raises CRM activities one way: turn crmToFHIR off")
	}
	if def.IsEnabled() {
		for _, o := range set.maps {
			if od := o.def; od != def && od.FHIRType == def.FHIRType && od.IsEnabled() && od.FHIRToCRM.Enabled {
				c.ps.add(at, "entity map %q also maps %s to the CRM: a signal map must be the only enabled one of its FHIR type (disable one)", od.Name, def.FHIRType)
			}
		}
	}
	if !def.FHIRToCRM.Allows(OpCreate) || !def.FHIRToCRM.Allows(OpUpdate) {
		c.ps.add(at, "a signal creates and updates its activity: fhirToCRM needs create and update")
	}
	if def.CRMEntity == "" || def.CRMEntitySet == "" {
		c.ps.add(at, "a signal needs the activity table as crmEntity and crmEntitySet (task, tasks)")
	}
	if def.Correlation.CRMAttribute == "" {
		c.ps.add(at, "a signal keys its activity by correlation.crmAttribute, an alternate key of the activity table")
	}
	if s.When != "" {
		e, err := compileFHIRPath(s.When)
		if err != nil {
			c.ps.add(field("when"), "%v", err)
		}
		cs.when = e
	}
	list := func(f, expr string) *exprList {
		l, err := compileList(expr)
		if err != nil {
			c.ps.add(field(f), "%v", err)
		}
		return l
	}
	if s.EndsAt != "" {
		cs.endsAt = list("endsAt", s.EndsAt)
	}
	if p := s.Probability; p != nil {
		cs.prob = list("probability.path", p.Path)
		if math.IsNaN(p.AtLeast) || p.AtLeast < 0 || p.AtLeast > 1 {
			c.ps.add(field("probability.atLeast"), "atLeast is a probability between 0 and 1, got %v", p.AtLeast)
		}
	}
	if r := s.Risk; r != nil {
		cs.risk = list("risk.path", r.Path)
		if len(r.Codes) == 0 {
			c.ps.add(field("risk.codes"), "list the qualitative risk codes that raise the signal (e.g. high)")
		}
	}
	patient := s.Patient
	if patient == "" {
		patient = "subject.reference"
	}
	cs.patient = list("patient", patient)
	if s.PatientMap == "" {
		if s.Owner.Patient {
			c.ps.add(field("patientMap"), "owner.patient needs patientMap, the entity map that links patients to contacts")
		}
	} else if pm, ok := set.byName[s.PatientMap]; !ok {
		c.ps.add(field("patientMap"), "no entity map named %q", s.PatientMap)
	} else if pm.def.FHIRType != "Patient" {
		c.ps.add(field("patientMap"), "entity map %q maps %s, not Patient", s.PatientMap, pm.def.FHIRType)
	}
	n := 0
	for _, set := range []bool{s.Owner.Team != "", s.Owner.User != "", s.Owner.Patient} {
		if set {
			n++
		}
	}
	if n != 1 {
		c.ps.add(field("owner"), "set exactly one of owner.team (a team id), owner.user (a systemuser id) or owner.patient: true (the contact's owner)")
	}
	for _, id := range []struct{ f, v string }{{"owner.team", s.Owner.Team}, {"owner.user", s.Owner.User}} {
		if id.v != "" && !IsGUID(id.v) {
			c.ps.add(field(id.f), "%q is not a GUID", id.v)
		}
	}
	for _, st := range []struct {
		f string
		v *ActivityState
	}{{"close", s.Close}, {"open", s.Open}} {
		if st.v != nil && def.CRMEntity == "task" && !ValidTaskState(*st.v) {
			c.ps.add(field(st.f), "statecode %d with statuscode %d is not a valid pair for task", st.v.State, st.v.Status)
		}
	}
	if s.Open != nil && s.Open.State != 0 {
		c.ps.add(field("open"), "an open activity has statecode 0")
	}
	if s.Close != nil && s.Close.State == 0 {
		c.ps.add(field("close"), "a closed activity has a statecode other than 0")
	}
	m.signal = cs
}

// ValidTaskState reports whether st is a documented statecode/statuscode
// pair of the task table.
func ValidTaskState(st ActivityState) bool {
	switch st.State {
	case 0:
		return slices.Contains([]int{2, 3, 4, 7}, st.Status)
	case 1:
		return st.Status == 5
	case 2:
		return st.Status == 6
	}
	return false
}
