package agent_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// signalTeam is the care coordinators' team the test's signal maps own
// their tasks by; signalTeamSetup creates it in the sandbox CRM.
const signalTeam = "5e1a0000-0000-4000-8000-00000000c0de"

// withSignalMaps adds two signal maps to the starter set: Flags and
// RiskAssessments (probability 0.7 or more, or a high qualitative risk)
// raise tasks regarding the patient's contact, owned by the team.
func withSignalMaps(doc *maps.Document) {
	for i := range doc.EntityMaps {
		switch doc.EntityMaps[i].FHIRType {
		case "Flag", "RiskAssessment":
			off := false
			doc.EntityMaps[i].Enabled = &off
		}
	}
	task := func(name, fhirType, subject string, sig maps.Signal) maps.EntityMap {
		return maps.EntityMap{
			Name: name, CRMEntity: "task", CRMEntitySet: "tasks", CRMIDAttribute: "activityid", FHIRType: fhirType,
			FHIRToCRM:   maps.Flow{Enabled: true, Operations: []maps.Operation{maps.OpCreate, maps.OpUpdate}},
			Correlation: maps.Correlation{CRMAttribute: "fhirsync_signalsource", FHIRIdentifierSystem: "urn:fhirsync:crm:signaltaskid"},
			Attributes: []maps.AttributeMap{
				{Name: "subject", CRMAttribute: "subject", CRMType: maps.TypeString, Action: maps.ActionComputed, Expression: subject, Direction: maps.FHIRToCRM},
				{Name: "priority", CRMAttribute: "prioritycode", CRMType: maps.TypeOptionSet, Action: maps.ActionDefault, Default: "2", Direction: maps.FHIRToCRM},
				{Name: "regarding", CRMAttribute: "regardingobjectid", CRMType: maps.TypeLookup, FHIRPath: "subject.reference", Action: maps.ActionLookup,
					Lookup: &maps.Lookup{EntityMap: "patient-contact", Navigation: "regardingobjectid_contact_task"}, Direction: maps.FHIRToCRM},
			},
			Signal: &sig,
		}
	}
	doc.EntityMaps = append(doc.EntityMaps,
		task("flag-task", "Flag", "'Flag: ' + code.text", maps.Signal{When: "status = 'active'", EndsAt: "period.end", PatientMap: "patient-contact", Owner: maps.SignalOwner{Team: signalTeam}}),
		task("risk-task", "RiskAssessment", "'Risk: ' + prediction.first().outcome.text", maps.Signal{When: "status = 'final'",
			Probability: &maps.ProbabilityThreshold{Path: "prediction.probabilityDecimal", AtLeast: 0.7},
			Risk:        &maps.RiskCodes{Path: "prediction.qualitativeRisk.coding.code", Codes: []string{"high"}},
			PatientMap:  "patient-contact", Owner: maps.SignalOwner{Team: signalTeam}, Reopen: true}),
	)
}

// signalTask is a signal's task as the CRM holds it.
type signalTask struct {
	count            int
	id, subject      string
	state, status    int
	regarding, owner string
	priority         int
}

// taskOf reads the tasks keyed by the signal's source, Type_id.
func (e *env) taskOf(t *testing.T, key string) signalTask {
	t.Helper()
	var out signalTask
	err := e.crmHuman.RetrieveMultiple(context.Background(), "tasks", crm.Query{
		Select: []string{"activityid", "subject", "statecode", "statuscode", "prioritycode", "_regardingobjectid_value", "_owningteam_value", "_owninguser_value"},
		Filter: "fhirsync_signalsource eq '" + key + "'"}, func(r crm.Record) error {
		out.count++
		out.id, out.subject = r.String("activityid"), r.String("subject")
		out.state, out.status, out.priority = num(r["statecode"]), num(r["statuscode"]), num(r["prioritycode"])
		out.regarding = r.String("_regardingobjectid_value")
		out.owner = r.String("_owningteam_value")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func num(v any) int {
	switch x := v.(type) {
	case float64:
		return int(x)
	case json.Number:
		n, _ := x.Int64()
		return int(n)
	}
	return -1
}

// contactOf is the CRM contact id of a synced patient.
func (e *env) contactOf(t *testing.T, patient string) string {
	t.Helper()
	rec, err := e.crmHuman.Retrieve(context.Background(), crm.ByKey("contacts", "msemr_azurefhirid", patient), "contactid")
	if err != nil {
		t.Fatal(err)
	}
	return rec.String("contactid")
}

// fhirChange writes res to the FHIR server and announces it on the queue;
// it returns the stored resource and the notice's message id.
func (e *env) fhirChange(t *testing.T, res fhir.Resource) (fhir.Resource, string) {
	t.Helper()
	ctx := context.Background()
	var got fhir.Resource
	var err error
	ev := queues.EventCreated
	if id, _ := res["id"].(string); id == "" {
		got, err = e.fhir.Create(ctx, res)
	} else {
		ev = queues.EventUpdated
		got, err = e.fhir.Update(ctx, res, "")
	}
	if err != nil {
		t.Fatal(err)
	}
	typ, _ := got["resourceType"].(string)
	id, _ := got["id"].(string)
	meta, _ := got["meta"].(map[string]any)
	ver, _ := meta["versionId"].(string)
	return got, e.notify(t, queues.SideFHIR, typ, id, ver, ev)
}

func setupSignals(t *testing.T, db *gorm.DB, tweaks ...func(*maps.Document)) (*env, string) {
	t.Helper()
	tweak := func(doc *maps.Document) {
		withSignalMaps(doc)
		for _, f := range tweaks {
			f(doc)
		}
	}
	e := startEnv(t, db, agent.Config{Workers: 4, RetryBase: 200 * time.Millisecond, RetryMax: time.Second}, envOptions{tweak: tweak})
	if _, err := e.crmHuman.Create(context.Background(), "teams", crm.Record{"teamid": signalTeam, "name": "Care coordinators"}); err != nil {
		t.Fatal(err)
	}
	p0 := synth.PatientID(0)
	e.waitDecision(t, p0, logs.FHIRToCRM, "created")
	return e, p0
}

// TestSignalFlagTask: an active Flag opens a task for the care
// coordinators regarding the patient's contact, owned by the team; a
// change to the Flag updates it; the same notice delivered again, and
// other notices of the same version, change nothing and duplicate
// nothing; the Flag's end closes the task (statecode 1, statuscode 5). A
// Flag whose period has ended raises nothing.
func TestSignalFlagTask(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e, p0 := setupSignals(t, db)
		contact := e.contactOf(t, p0)

		flag, msg := e.fhirChange(t, fhir.Resource{"resourceType": "Flag", "status": "active",
			"code": map[string]any{"text": "Fall risk"}, "subject": map[string]any{"reference": "Patient/" + p0}})
		fid, _ := flag["id"].(string)
		key := "Flag_" + fid
		d := e.byMessage(t, msg, logs.ReasonSignalOpened)
		if d.Outcome != logs.OutcomeSent || d.EntityMap != "flag-task" {
			t.Errorf("decision = %s/%s on %s", d.Outcome, d.Reason, d.EntityMap)
		}
		if d.Message == "" || containsAny(d.Message, "Fall risk", p0) {
			t.Errorf("decision message %q is empty or carries the record's values", d.Message)
		}
		task := e.taskOf(t, key)
		if task.count != 1 || task.subject != "Flag: Fall risk" || task.state != 0 || task.status != 2 || task.priority != 2 {
			t.Fatalf("task = %+v, want one open Not Started task 'Flag: Fall risk' of high priority", task)
		}
		if task.regarding != contact || task.owner != signalTeam {
			t.Errorf("task regarding %s owned by %s, want contact %s and team %s", task.regarding, task.owner, contact, signalTeam)
		}

		// The same notice again (a redelivery), and a second notice of the
		// same version from another feed, at once.
		again := e.notifyOrigin(t, "Flag", fid, versionOf(flag), "redelivery")
		other := e.notifyOrigin(t, "Flag", fid, versionOf(flag), "ahds")
		for _, m := range []string{again, other} {
			d := e.settled(t, m)
			if d.Reason != "unchanged" && d.Reason != "stale_version" {
				t.Errorf("redelivered notice decided %s/%s: %s (changed %v)", d.Outcome, d.Reason, d.Message, d.ChangedFields)
			}
		}
		if got := e.taskOf(t, key); got.count != 1 || got.id != task.id {
			t.Fatalf("after redelivery: %d task(s) (%s), want the one task %s", got.count, got.id, task.id)
		}

		// The Flag changes: the task follows.
		flag["code"] = map[string]any{"text": "Fall risk, uses a walker"}
		flag, msg = e.fhirChange(t, flag)
		e.byMessage(t, msg, logs.ReasonSignalUpdated)
		if got := e.taskOf(t, key); got.count != 1 || got.subject != "Flag: Fall risk, uses a walker" || got.state != 0 {
			t.Fatalf("after the update: %+v", got)
		}

		// The Flag ends: the task is completed.
		flag["status"] = "inactive"
		flag, msg = e.fhirChange(t, flag)
		e.byMessage(t, msg, logs.ReasonSignalClosed)
		if got := e.taskOf(t, key); got.count != 1 || got.state != 1 || got.status != 5 {
			t.Fatalf("after the Flag ended: %+v, want statecode 1 statuscode 5", got)
		}
		// Ended again (a later version, still inactive): nothing to close.
		flag["code"] = map[string]any{"text": "Fall risk (resolved)"}
		_, msg = e.fhirChange(t, flag)
		e.byMessage(t, msg, logs.ReasonBelowSignalThreshold)

		// A Flag whose period ended yesterday raises nothing.
		past, msg := e.fhirChange(t, fhir.Resource{"resourceType": "Flag", "status": "active",
			"code": map[string]any{"text": "Old alert"}, "subject": map[string]any{"reference": "Patient/" + p0},
			"period": map[string]any{"start": "2020-01-01", "end": time.Now().AddDate(0, 0, -1).Format("2006-01-02")}})
		e.byMessage(t, msg, logs.ReasonBelowSignalThreshold)
		if got := e.taskOf(t, "Flag_"+past["id"].(string)); got.count != 0 {
			t.Errorf("an ended Flag raised %d task(s)", got.count)
		}
	})
}

// TestSignalRiskAssessmentThreshold: a RiskAssessment whose probability
// reaches the threshold opens a task; falling below it closes the task;
// rising again reopens it (the map says reopen); a qualitative high risk
// opens one without a probability; a low one raises nothing.
func TestSignalRiskAssessmentThreshold(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e, p0 := setupSignals(t, db)
		risk := func(p string) []any {
			return []any{map[string]any{"outcome": map[string]any{"text": "Readmission"}, "probabilityDecimal": json.Number(p)}}
		}
		ra, msg := e.fhirChange(t, fhir.Resource{"resourceType": "RiskAssessment", "status": "final",
			"subject": map[string]any{"reference": "Patient/" + p0}, "prediction": risk("0.82")})
		key := "RiskAssessment_" + ra["id"].(string)
		e.byMessage(t, msg, logs.ReasonSignalOpened)
		if got := e.taskOf(t, key); got.count != 1 || got.state != 0 || got.subject != "Risk: Readmission" {
			t.Fatalf("task = %+v", got)
		}
		ra["prediction"] = risk("0.4")
		ra, msg = e.fhirChange(t, ra)
		d := e.byMessage(t, msg, logs.ReasonSignalClosed)
		if !containsAny(d.Message, "0.7") || containsAny(d.Message, "0.4") {
			t.Errorf("closing message %q should name the threshold, not the value", d.Message)
		}
		if got := e.taskOf(t, key); got.count != 1 || got.state != 1 || got.status != 5 {
			t.Fatalf("after the risk fell: %+v", got)
		}
		ra["prediction"] = risk("0.7")
		_, msg = e.fhirChange(t, ra)
		e.byMessage(t, msg, logs.ReasonSignalOpened)
		if got := e.taskOf(t, key); got.count != 1 || got.state != 0 || got.status != 2 {
			t.Fatalf("after the risk rose again: %+v, want the same task reopened", got)
		}

		qual := func(code string) []any {
			return []any{map[string]any{"outcome": map[string]any{"text": "Fall"},
				"qualitativeRisk": map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/risk-probability", "code": code}}}}}
		}
		high, msg := e.fhirChange(t, fhir.Resource{"resourceType": "RiskAssessment", "status": "final",
			"subject": map[string]any{"reference": "Patient/" + p0}, "prediction": qual("high")})
		e.byMessage(t, msg, logs.ReasonSignalOpened)
		if got := e.taskOf(t, "RiskAssessment_"+high["id"].(string)); got.count != 1 || got.subject != "Risk: Fall" {
			t.Errorf("high qualitative risk: %+v", got)
		}
		low, msg := e.fhirChange(t, fhir.Resource{"resourceType": "RiskAssessment", "status": "final",
			"subject": map[string]any{"reference": "Patient/" + p0}, "prediction": qual("low")})
		e.byMessage(t, msg, logs.ReasonBelowSignalThreshold)
		if got := e.taskOf(t, "RiskAssessment_"+low["id"].(string)); got.count != 0 {
			t.Errorf("low qualitative risk raised %d task(s)", got.count)
		}
	})
}

// TestSignalTwoReplicas: two agents on the same database, queue and CRM
// take notices of the same new Flags at the same time; each Flag gets
// exactly one task.
func TestSignalTwoReplicas(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e, p0 := setupSignals(t, db)
		e.startReplica(t)
		var keys []string
		var msgs []string
		for i := range 6 {
			res, err := e.fhir.Create(context.Background(), fhir.Resource{"resourceType": "Flag", "status": "active",
				"code": map[string]any{"text": "Alert"}, "subject": map[string]any{"reference": "Patient/" + p0}})
			if err != nil {
				t.Fatal(err)
			}
			id := res["id"].(string)
			keys = append(keys, "Flag_"+id)
			// Each Flag is announced by three feeds at once: three
			// messages the two replicas share.
			for _, origin := range []string{"poll", "ahds", "hook"} {
				msgs = append(msgs, e.notifyOrigin(t, "Flag", id, versionOf(res), origin+string(rune('a'+i))))
			}
		}
		opened := 0
		for _, m := range msgs {
			d := e.settled(t, m)
			if d.Reason == logs.ReasonSignalOpened {
				opened++
			}
		}
		if opened != len(keys) {
			t.Errorf("%d signal_opened decisions for %d Flags", opened, len(keys))
		}
		for _, k := range keys {
			if got := e.taskOf(t, k); got.count != 1 {
				t.Errorf("%s: %d tasks, want 1", k, got.count)
			}
		}
	})
}

// settled waits for the message's decision that is not a retry.
func (e *env) settled(t *testing.T, id string) logs.Decision {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, d := range e.messageDecisions(t, id) {
			if d.Outcome != logs.OutcomeFailed {
				return d
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("message %s: no final decision within 60s; saw %v", id, reasons(e.messageDecisions(t, id)))
	return logs.Decision{}
}

func versionOf(res fhir.Resource) string {
	meta, _ := res["meta"].(map[string]any)
	v, _ := meta["versionId"].(string)
	return v
}

// notifyOrigin announces a FHIR change as a feed named origin would: a
// message of its own for the same version.
func (e *env) notifyOrigin(t *testing.T, typ, id, version, origin string) string {
	t.Helper()
	n := queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Type: typ, ID: id, Version: version, Event: queues.EventUpdated,
		Origin: origin, ChangedAt: time.Now()}
	msg, err := n.Message()
	if err != nil {
		t.Fatal(err)
	}
	msg.ID += "-" + origin
	if err := e.fhirQ.Send(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	return msg.ID
}

// startReplica runs a second agent on the environment's database, queues
// and endpoints.
func (e *env) startReplica(t *testing.T) {
	t.Helper()
	ms, err := maps.New(e.db, maps.Options{PollInterval: 200 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	crmAgent, err := crm.New(crm.Config{URL: e.crmURL, Auth: crm.AuthBearer, Token: "agent-token"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{Workers: 4, RetryBase: 200 * time.Millisecond, RetryMax: time.Second, CRMUserID: agentUser},
		agent.Deps{DB: e.db, Maps: ms, FHIR: e.fhir, CRM: crmAgent, Logs: e.logs, FHIRChanges: e.fhirQ, CRMChanges: e.crmQ})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := a.Run(ctx); err != nil && err != context.Canceled {
			t.Errorf("replica: %v", err)
		}
	})
	<-a.Ready()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func containsAny(s string, subs ...string) bool {
	for _, x := range subs {
		if x != "" && strings.Contains(s, x) {
			return true
		}
	}
	return false
}

// TestSignalOwnerIsThePatientsOwner: with owner.patient, a Flag's task is
// owned by whoever owns the patient's contact — here a team a
// coordinator assigned the contact to — not by fhirsync's user.
func TestSignalOwnerIsThePatientsOwner(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e, p0 := setupSignals(t, db, func(doc *maps.Document) {
			for i := range doc.EntityMaps {
				if doc.EntityMaps[i].Name == "flag-task" {
					doc.EntityMaps[i].Signal.Owner = maps.SignalOwner{Patient: true}
				}
			}
		})
		ctx := context.Background()
		const ward = "5e1a0000-0000-4000-8000-00000000a11d"
		if _, err := e.crmHuman.Create(ctx, "teams", crm.Record{"teamid": ward, "name": "Cardiology ward"}); err != nil {
			t.Fatal(err)
		}
		contact := e.contactOf(t, p0)
		if _, err := e.crmHuman.Upsert(ctx, crm.ByID("contacts", contact), crm.Record{"ownerid@odata.bind": crm.Bind("teams", ward)}, crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
			t.Fatal(err)
		}
		flag, msg := e.fhirChange(t, fhir.Resource{"resourceType": "Flag", "status": "active",
			"code": map[string]any{"text": "Falls"}, "subject": map[string]any{"reference": "Patient/" + p0}})
		e.byMessage(t, msg, logs.ReasonSignalOpened)
		if got := e.taskOf(t, "Flag_"+flag["id"].(string)); got.count != 1 || got.owner != ward || got.regarding != contact {
			t.Fatalf("task %+v, want one owned by the contact's team %s regarding %s", got, ward, contact)
		}
	})
}
