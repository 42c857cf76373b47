package crm

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/corpus"
)

// contextCorpus lists the context samples of the conformance corpus
// (testdata/conformance, each with its address in SOURCES.md), as sorted
// slash-separated paths relative to the corpus.
func contextCorpus(t testing.TB) []string {
	t.Helper()
	files, err := corpus.Contexts()
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// corpusFiles lists the samples under dir of the corpus (none when dir
// does not exist).
func corpusFiles(t testing.TB, dir string) []string {
	t.Helper()
	files, err := corpus.Files(filepath.ToSlash(dir))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func readCorpusFile(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := corpus.Read(rel)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// addContextSeeds seeds a fuzz test with every context sample: the
// decoder's own samples in testdata/remotecontext and the conformance
// corpus.
func addContextSeeds(f *testing.F) {
	f.Helper()
	own, err := filepath.Glob(filepath.Join("testdata", "remotecontext", "*.json"))
	if err != nil || len(own) == 0 {
		f.Fatalf("no samples in testdata/remotecontext: %v", err)
	}
	for _, name := range own {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, rel := range contextCorpus(f) {
		f.Add(readCorpusFile(f, rel))
	}
}

// contextWant is what decoding a corpus sample must give. A sample that is
// not a valid context states wantErr and leaves the rest empty.
type contextWant struct {
	wantErr error // the error class (errors.Is); nil: decodes

	message, entity, id string
	event               queues.Event
	version             string // the notice's version (post image or target RowVersion)
	initiator           string
	changedAt           time.Time
	// target lists the Target entity's attribute names, sorted (nil: no
	// Target entity); pre and post list each image's, by image key.
	target    []string
	pre, post map[string][]string
	targetRef string // "logicalname/id" of an EntityReference target
	hasParent bool
	// check asserts what the columns above cannot say.
	check func(t *testing.T, x *ExecutionContext)
}

// contextExpectations states the expected result of every context sample
// of the conformance corpus, by its path under testdata/conformance. A
// sample without an entry fails TestContextConformance, so adding a file
// adds a case.
var contextExpectations = map[string]contextWant{
	"dataverse/contexts/create-account-sync-cp1252-mojibake.json": {message: "Create", entity: "account", id: "53c52f26-a89d-ef11-8a69-000d3a30b0c1", event: queues.EventCreated, version: "", initiator: "3570e963-e69c-ef11-8a6b-000d3a318589", changedAt: time.UnixMilli(1731053106922).UTC(), hasParent: true,
		target: []string{"accountclassificationcode", "accountid", "accountratingcode", "address2_addresstypecode", "address2_freighttermscode", "address2_shippingmethodcode", "businesstypecode", "createdby", "createdon", "creditonhold", "customersizecode", "donotbulkemail", "donotbulkpostalmail", "donotemail", "donotfax", "donotphone", "donotpostalmail", "donotsendmm", "exchangerate", "followemail", "isprivate", "marketingonly", "merged", "modifiedby", "modifiedon", "modifiedonbehalfby", "name", "new_name", "ownerid", "owningbusinessunit", "participatesinworkflow", "preferredcontactmethodcode", "processid", "shippingmethodcode", "statecode", "statuscode", "territorycode", "transactioncurrencyid"},
		check: func(t *testing.T, x *ExecutionContext) {
			// text that arrived as UTF-8 read as Windows-1252 is kept as it came
			a := x.Target.Attributes
			if s, _ := a["name"].(string); !strings.HasPrefix(s, "\u00d0\u0090\u00d0\u00b0") || a["exchangerate"] != json.Number("1") ||
				a["statecode"] != (OptionSetValue{Value: 0}) || x.Mode != 0 {
				t.Fatalf("target = %#v, mode %d", a, x.Mode)
			}
			if ref, ok := a["transactioncurrencyid"].(*EntityReference); !ok || ref.LogicalName != "transactioncurrency" {
				t.Fatalf("transactioncurrencyid = %#v", a["transactioncurrencyid"])
			}
		},
	},
	"dataverse/contexts/create-allfields-sync-unknown-member.json": {message: "Create", entity: "shko_allfields", id: "6420f0cc-916b-ee11-9ae6-000d3a688809", event: queues.EventCreated, version: "", initiator: "c7877889-0f5f-ee11-8def-000d3adbef1f", changedAt: time.UnixMilli(1697398446012).UTC(), hasParent: true,
		target: []string{"createdby", "createdon", "exchangerate", "modifiedby", "modifiedon", "modifiedonbehalfby", "ownerid", "owningbusinessunit", "shko_allfieldsid", "shko_boolean", "shko_choice", "shko_choices", "shko_currency", "shko_currency_base", "shko_datetime", "shko_decimal", "shko_integer", "shko_lookup", "shko_name", "shko_string", "statecode", "statuscode", "timezoneruleversionnumber", "transactioncurrencyid"},
		check: func(t *testing.T, x *ExecutionContext) {
			a := x.Target.Attributes
			choices, _ := a["shko_choices"].([]any)
			if a["shko_currency"] != (Money{Value: "100"}) || a["shko_decimal"] != json.Number("10.12") || a["shko_integer"] != json.Number("321") ||
				a["shko_boolean"] != false || len(choices) != 2 || choices[1] != (OptionSetValue{Value: 342490002}) {
				t.Fatalf("target = %#v", a)
			}
			if d, ok := a["shko_datetime"].(time.Time); !ok || d.UnixMilli() != 1697526000000 {
				t.Fatalf("shko_datetime = %#v", a["shko_datetime"])
			}
			if ref, ok := a["shko_lookup"].(*EntityReference); !ok || ref.LogicalName != "systemuser" {
				t.Fatalf("shko_lookup = %#v", a["shko_lookup"])
			}
		},
	},
	"dataverse/contexts/create-alltypes-async-compact.json": {message: "Create", entity: "albxrm_alltypes", id: "44bfc2a7-903e-eb11-a813-000d3ad9c2e1", event: queues.EventCreated, version: "", initiator: "a0bde583-0537-eb11-bf68-0022489b563d", changedAt: time.UnixMilli(1608007658000).UTC(), hasParent: true,
		target: []string{"albxrm_alltypesid", "albxrm_currency", "albxrm_currency_base", "albxrm_customer", "albxrm_dateandtime", "albxrm_decimal", "albxrm_float", "albxrm_lookupaccount", "albxrm_multiplelinesoftext", "albxrm_multiselectoptionset", "albxrm_name", "albxrm_optionset", "albxrm_twooptions", "albxrm_wholenumber", "createdby", "createdon", "exchangerate", "modifiedby", "modifiedon", "modifiedonbehalfby", "ownerid", "owningbusinessunit", "statecode", "statuscode", "timezoneruleversionnumber", "transactioncurrencyid"},
		post:   map[string][]string{"AsynchronousStepPrimaryName": []string{"albxrm_alltypesid", "albxrm_name"}},
		check: func(t *testing.T, x *ExecutionContext) {
			a := x.Target.Attributes
			if a["albxrm_multiplelinesoftext"] != "sdafasf\nasdfas\nafsd" || a["exchangerate"] != json.Number("1.0000000000") ||
				a["albxrm_currency"] != (Money{Value: "2154.32"}) || x.Target.FormattedValues["albxrm_optionset"] != "Value 2" || x.Mode != 1 {
				t.Fatalf("target = %#v, formatted %v", a, x.Target.FormattedValues)
			}
			img := x.PostEntityImages["AsynchronousStepPrimaryName"]
			if img.LogicalName != "albxrm_alltypes" || img.ID != x.PrimaryEntityID {
				t.Fatalf("untyped post image = %+v", img)
			}
		},
	},
	"dataverse/contexts/create-documentlocation-async-queryexpression.json": {message: "Create", entity: "sharepointdocumentlocation", id: "1e3839b3-08d4-ef11-aeb0-00155d000101", event: queues.EventCreated, version: "", initiator: "30c91177-9436-4042-ad53-dd966d490114", changedAt: time.UnixMilli(1737024736000).UTC(), hasParent: true,
		target: []string{"createdby", "createdon", "locationtype", "modifiedby", "modifiedon", "modifiedonbehalfby", "name", "ownerid", "owningbusinessunit", "owninguser", "parentsiteorlocation", "regardingobjectid", "relativeurl", "servicetype", "sharepointdocumentlocationid", "sitecollectionid", "statecode", "statuscode"},
		post:   map[string][]string{"AsynchronousStepPrimaryName": []string{"name", "sharepointdocumentlocationid"}, "PostImage": []string{"name", "ownerid", "parentsiteorlocation", "regardingobjectid", "relativeurl", "sharepointdocumentlocationid", "statecode", "statuscode"}},
		check: func(t *testing.T, x *ExecutionContext) {
			ref, ok := x.PostEntityImages["PostImage"].Attributes["regardingobjectid"].(*EntityReference)
			if !ok || ref.LogicalName != "account" || ref.Name != "Mini test" || ref.ID != "0a3839b3-08d4-ef11-aeb0-00155d000101" {
				t.Fatalf("post image regardingobjectid = %#v", x.PostEntityImages["PostImage"].Attributes["regardingobjectid"])
			}
		},
	},
	"dataverse/contexts/update-account-sync-typed-primitives.json": {message: "Update", entity: "account", id: "ec4e2f7d-9d60-e811-a95a-000d3af24950", event: queues.EventUpdated, version: "", initiator: "df010dad-f103-4589-ba66-76a5a04c2a11", changedAt: time.UnixMilli(1527757530151).UTC(), hasParent: true,
		target: []string{"accountid", "modifiedby", "modifiedon", "modifiedonbehalfby", "telephone1"},
		check: func(t *testing.T, x *ExecutionContext) {
			// {"__type":"Guid:#System","__value":…} and "DateTime:#System" are read as their values
			a := x.Target.Attributes
			if a["accountid"] != "ec4e2f7d-9d60-e811-a95a-000d3af24950" {
				t.Fatalf("accountid = %#v", a["accountid"])
			}
			if d, ok := a["modifiedon"].(time.Time); !ok || d.UnixMilli() != 1527757524000 {
				t.Fatalf("modifiedon = %#v", a["modifiedon"])
			}
		},
	},
	"dataverse/contexts/update-activity-async-preimage-entitycollection.json": {message: "Update", entity: "new_customactivity", id: "841579d9-7e63-ef11-9e4a-00155d0001ea", event: queues.EventUpdated, version: "", initiator: "400075a6-19a2-49aa-8fa0-330ba2810540", changedAt: time.UnixMilli(1724647396000).UTC(), hasParent: true,
		target: []string{"activityid", "modifiedby", "modifiedon", "modifiedonbehalfby", "statecode", "statuscode"},
		pre:    map[string][]string{"Image": []string{"description", "from", "regardingobjectid", "statecode", "statuscode", "subject", "to"}},
		post:   map[string][]string{"AsynchronousStepPrimaryName": []string{"activityid", "subject"}},
		check: func(t *testing.T, x *ExecutionContext) {
			// an EntityCollection's entities carry no __type
			for _, side := range []string{"from", "to"} {
				ec, ok := x.PreEntityImages["Image"].Attributes[side].(*EntityCollection)
				if !ok || len(ec.Entities) == 0 {
					t.Fatalf("pre image %s = %#v", side, x.PreEntityImages["Image"].Attributes[side])
				}
				for _, e := range ec.Entities {
					if e.LogicalName != "activityparty" || e.ID == "" {
						t.Fatalf("pre image %s entity = %+v", side, e)
					}
				}
			}
			if x.InputParameters["parentExecutionId"] == nil {
				t.Fatalf("parameters = %v", x.InputParameters)
			}
		},
	},
	"dataverse/contexts/webhook-create-agentstatus-sync-formattedvalues.json": {message: "Create", entity: "msdyn_agentstatus", id: "4b1e3d75-a749-ef11-acce-00224802d26d", event: queues.EventCreated, version: "", initiator: "09eb2446-db10-ef11-9f8a-6045bdd4c6be", changedAt: time.UnixMilli(1721816905786).UTC(), hasParent: true,
		target: []string{"createdby", "createdon", "modifiedby", "modifiedon", "modifiedonbehalfby", "msdyn_agentid", "msdyn_agentstatusid", "msdyn_availableunitscapacity", "msdyn_capacitymodifiedon", "msdyn_currentpresenceid", "msdyn_isagentloggedin", "msdyn_isblockedbysomeprofile", "msdyn_presencemodifiedby", "msdyn_presencemodifiedon", "ownerid", "owningbusinessunit", "owninguser", "statecode", "statuscode", "timezoneruleversionnumber"},
		check: func(t *testing.T, x *ExecutionContext) {
			if x.Mode != 0 || x.Stage != 40 || x.Target.Attributes["statecode"] != (OptionSetValue{Value: 0}) ||
				x.Target.FormattedValues["statecode"] != "Active" || x.OutputParameters["id"] != x.PrimaryEntityID {
				t.Fatalf("context = %+v, target %+v", x, x.Target)
			}
		},
	},
	"dataverse/contexts/webhook-update-agentstatus-async-parentcontext.json": {message: "Update", entity: "msdyn_agentstatus", id: "3d1feef9-604d-ef11-bfe3-6045bd03d9d8", event: queues.EventUpdated, version: "5948260", initiator: "d89254ff-9438-ef11-a315-000d3a5a54dc", changedAt: time.UnixMilli(1722582039000).UTC(), hasParent: true,
		target: []string{"modifiedby", "modifiedon", "modifiedonbehalfby", "msdyn_agentid", "msdyn_agentstatusid", "msdyn_availableunitscapacity", "msdyn_capacitymodifiedon", "msdyn_currentpresenceid", "msdyn_isagentloggedin", "msdyn_isblockedbysomeprofile", "msdyn_presencemodifiedby", "msdyn_presencemodifiedon", "timezoneruleversionnumber"},
		post:   map[string][]string{"AsynchronousStepPrimaryName": []string{"msdyn_agentstatusid"}},
		check: func(t *testing.T, x *ExecutionContext) {
			if x.Target.RowVersion != "5948260" || x.SharedVariables["IsAutoTransact"] != true || x.Mode != 1 {
				t.Fatalf("context = %+v", x)
			}
		},
	},
	"dataverse/contexts/webhook-update-contact-async-postimage.json": {message: "Update", entity: "contact", id: "6d81597f-0f9f-e711-8122-000d3aa2331c", event: queues.EventUpdated, version: "", initiator: "75c2dd85-e89e-e711-8122-000d3aa2331c", changedAt: time.UnixMilli(1506409448000).UTC(), hasParent: true,
		target: []string{"contactid", "firstname", "fullname", "modifiedby", "modifiedon", "modifiedonbehalfby", "yomifullname"},
		post:   map[string][]string{"AsynchronousStepPrimaryName": []string{"contactid", "fullname"}},
		check: func(t *testing.T, x *ExecutionContext) {
			checkDocsWebhookContact(t, x, "James Glynn (sample)")
		},
	},
	"modified/dataverse/webhook-update-contact-async-postimage.as-delete.json": {message: "Delete", entity: "contact", id: "6d81597f-0f9f-e711-8122-000d3aa2331c", event: queues.EventDeleted, version: "", initiator: "75c2dd85-e89e-e711-8122-000d3aa2331c", changedAt: time.UnixMilli(1506409448000).UTC(), hasParent: true,
		targetRef: "contact/6d81597f-0f9f-e711-8122-000d3aa2331c",
		pre:       map[string][]string{"PreImage": {"contactid", "fullname"}},
		check: func(t *testing.T, x *ExecutionContext) {
			if img := x.PreEntityImages["PreImage"]; img.Attributes["fullname"] != "James Glynn (sample)" || img.ID != x.PrimaryEntityID {
				t.Fatalf("untyped pre image = %+v", img)
			}
		},
	},
	"modified/dataverse/webhook-update-contact-async-postimage.large-fullname.json": {message: "Update", entity: "contact", id: "6d81597f-0f9f-e711-8122-000d3aa2331c", event: queues.EventUpdated, version: "", initiator: "75c2dd85-e89e-e711-8122-000d3aa2331c", changedAt: time.UnixMilli(1506409448000).UTC(), hasParent: true,
		target: []string{"contactid", "firstname", "fullname", "modifiedby", "modifiedon", "modifiedonbehalfby", "yomifullname"},
		post:   map[string][]string{"AsynchronousStepPrimaryName": []string{"contactid", "fullname"}},
		check: func(t *testing.T, x *ExecutionContext) {
			if s, _ := x.Target.Attributes["fullname"].(string); len(s) != 5000 {
				t.Fatalf("target fullname is %d bytes", len(s))
			}
			checkDocsWebhookContact(t, x, "James Glynn (sample)")
		},
	},
	"modified/dataverse/webhook-update-contact-async-postimage.reversed-members.json": {message: "Update", entity: "contact", id: "6d81597f-0f9f-e711-8122-000d3aa2331c", event: queues.EventUpdated, version: "", initiator: "75c2dd85-e89e-e711-8122-000d3aa2331c", changedAt: time.UnixMilli(1506409448000).UTC(), hasParent: true,
		target: []string{"contactid", "firstname", "fullname", "modifiedby", "modifiedon", "modifiedonbehalfby", "yomifullname"},
		post:   map[string][]string{"AsynchronousStepPrimaryName": []string{"contactid", "fullname"}},
		check: func(t *testing.T, x *ExecutionContext) {
			checkDocsWebhookContact(t, x, "James Glynn (sample)")
		},
	},
	"modified/dataverse/webhook-update-contact-async-postimage.size-exceeded.json": {message: "Update", entity: "contact", id: "6d81597f-0f9f-e711-8122-000d3aa2331c", event: queues.EventUpdated, version: "", initiator: "75c2dd85-e89e-e711-8122-000d3aa2331c", changedAt: time.UnixMilli(1506409448000).UTC(), hasParent: false,
		target: []string(nil),
		check: func(t *testing.T, x *ExecutionContext) {
			if x.Target != nil || x.InputParameters == nil || len(x.InputParameters) != 0 || x.Stage != 40 {
				t.Fatalf("truncated context = %+v", x)
			}
		},
	},
}

// checkDocsWebhookContact checks the values of the webhook body printed in
// use-webhooks.md (and of the samples changed from it).
func checkDocsWebhookContact(t *testing.T, x *ExecutionContext, postFullname string) {
	t.Helper()
	a := x.Target.Attributes
	if a["firstname"] != "James" || a["modifiedonbehalfby"] != nil || x.Mode != 1 || x.Stage != 40 || x.RequestID != "" {
		t.Fatalf("context = %+v, target %#v", x, a)
	}
	if d, ok := a["modifiedon"].(time.Time); !ok || d.UnixMilli() != 1506384247000 {
		t.Fatalf("modifiedon = %#v", a["modifiedon"])
	}
	if ref, ok := a["modifiedby"].(*EntityReference); !ok || ref.LogicalName != "systemuser" || ref.ID != "75c2dd85-e89e-e711-8122-000d3aa2331c" {
		t.Fatalf("modifiedby = %#v", a["modifiedby"])
	}
	img := x.PostEntityImages["AsynchronousStepPrimaryName"]
	if img.LogicalName != "contact" || img.ID != x.PrimaryEntityID || img.Attributes["fullname"] != postFullname {
		t.Fatalf("untyped post image = %+v", img)
	}
}

// TestContextConformance decodes every RemoteExecutionContext of the
// conformance corpus and compares it with its stated expectation.
func TestContextConformance(t *testing.T) {
	t.Parallel()
	files := contextCorpus(t)
	for name := range contextExpectations {
		if !slices.Contains(files, name) {
			t.Errorf("expectation for %s, which is not in the corpus", name)
		}
	}
	for _, file := range files {
		t.Run(file, func(t *testing.T) {
			t.Parallel()
			want, ok := contextExpectations[file]
			if !ok {
				t.Fatalf("no expectation for %s", file)
			}
			body := readCorpusFile(t, file)
			x, err := DecodeRemoteExecutionContext(body)
			ref, refErr := refDecodeRemoteExecutionContext(body)
			if (err == nil) != (refErr == nil) {
				t.Fatalf("decoder err = %v, reference err = %v", err, refErr)
			}
			if want.wantErr != nil {
				if !errors.Is(err, want.wantErr) {
					t.Fatalf("err = %v, want %v", err, want.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("decoding: %v", err)
			}
			checkContext(t, x, want)
			checkContext(t, ref, want)
		})
	}
}

func checkContext(t *testing.T, x *ExecutionContext, want contextWant) {
	t.Helper()
	if x.MessageName != want.message || x.PrimaryEntityName != want.entity || x.PrimaryEntityID != want.id {
		t.Fatalf("decoded %s %s %s, want %s %s %s", x.MessageName, x.PrimaryEntityName, x.PrimaryEntityID, want.message, want.entity, want.id)
	}
	if x.HasParent != want.hasParent {
		t.Fatalf("HasParent = %v", x.HasParent)
	}
	if got := entityAttrNames(x.Target); !slices.Equal(got, want.target) {
		t.Fatalf("target attributes = %q, want %q", got, want.target)
	}
	gotRef := ""
	if x.TargetRef != nil {
		gotRef = x.TargetRef.LogicalName + "/" + x.TargetRef.ID
	}
	if gotRef != want.targetRef {
		t.Fatalf("target reference = %q, want %q", gotRef, want.targetRef)
	}
	checkImages(t, "PreEntityImages", x.PreEntityImages, want.pre)
	checkImages(t, "PostEntityImages", x.PostEntityImages, want.post)
	n, err := x.Notice()
	if err != nil {
		t.Fatalf("notice: %v", err)
	}
	if n.Side != queues.SideCRM || n.Type != want.entity || n.ID != want.id || n.Event != want.event || n.Version != want.version ||
		n.Initiator != want.initiator || !n.ChangedAt.Equal(want.changedAt) || n.Origin != OriginEndpoint {
		t.Fatalf("notice = %+v", n)
	}
	if _, err := n.Message(); err != nil {
		t.Fatalf("notice does not encode: %v", err)
	}
	if want.check != nil {
		want.check(t, x)
	}
}

func checkImages(t *testing.T, what string, images map[string]*Entity, want map[string][]string) {
	t.Helper()
	if len(images) != len(want) {
		t.Fatalf("%s has %d images, want %d", what, len(images), len(want))
	}
	for key, attrs := range want {
		img, ok := images[key]
		if !ok {
			t.Fatalf("%s has no %s", what, key)
		}
		if got := entityAttrNames(img); !slices.Equal(got, attrs) {
			t.Fatalf("%s[%s] attributes = %q, want %q", what, key, got, attrs)
		}
	}
}

// entityAttrNames is e's attribute names, sorted (nil for no entity).
func entityAttrNames(e *Entity) []string {
	if e == nil {
		return nil
	}
	names := make([]string, 0, len(e.Attributes))
	for k := range e.Attributes {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}
