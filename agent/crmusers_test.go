package agent

import (
	"context"
	"errors"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func TestOwnCRMUsersAreEveryConfiguredUser(t *testing.T) {
	t.Parallel()
	own := newCRMUsers("AAAAAAAA-0000-0000-0000-000000000001", []string{"", "aaaaaaaa-0000-0000-0000-000000000002", "aaaaaaaa-0000-0000-0000-000000000003"})
	tests := []struct {
		name string
		id   string
		want bool
	}{
		{name: "the first user, in another case", id: "aaaaaaaa-0000-0000-0000-000000000001", want: true},
		{name: "the second user", id: "aaaaaaaa-0000-0000-0000-000000000002", want: true},
		{name: "the third user, upper case", id: "AAAAAAAA-0000-0000-0000-000000000003", want: true},
		{name: "another user", id: "bbbbbbbb-0000-0000-0000-000000000001"},
		{name: "no initiator", id: ""},
	}
	for _, tt := range tests {
		if got := own.has(tt.id); got != tt.want {
			t.Errorf("%s: has(%q) = %v, want %v", tt.name, tt.id, got, tt.want)
		}
		if got := own.initiated(queues.Notice{Initiator: tt.id}); got != tt.want {
			t.Errorf("%s: initiated = %v, want %v", tt.name, got, tt.want)
		}
	}
	if newCRMUsers("", nil).has("") || len(newCRMUsers("", []string{""})) != 0 {
		t.Error("no configured user must match nothing")
	}
}

// TestOwnWriteEchoOfEveryCRMUser: with a CRM client signing in as three
// application users, a change any of them made at a version the agent
// wrote is the agent's own echo, decided without reading the source.
func TestOwnWriteEchoOfEveryCRMUser(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		h := newHarness(t, db)
		users := []string{"user-a", "user-b", "user-c"}
		h.p.flows[queues.SideCRM].ownNotice = newCRMUsers(users[0], users[1:]).initiated
		h.crm.put("c1", "x")
		h.crm.readErr = errors.New("the source must not be read for a change the agent made")
		ctx := context.Background()
		for i, u := range append(users, "someone-else") {
			version := string(rune('1' + i))
			if err := h.p.writes.remember(ctx, "crm", "contact", "c1", `W/"`+version+`"`); err != nil {
				t.Fatal(err)
			}
			n := queues.Notice{V: 1, Side: queues.SideCRM, Type: "contact", ID: "c1", Version: version, Event: queues.EventUpdated, Origin: "test", Initiator: u}
			msg, err := n.Message()
			if err != nil {
				t.Fatal(err)
			}
			m := &queues.Received{Message: msg, DeliveryCount: 1, SequenceNumber: seq.Add(1)}
			h.p.handle(ctx, m)
			d := lastDecision(t, h, m.ID)
			echo := d.Outcome == logs.OutcomeSkipped && d.Reason == "own_write_echo"
			if want := u != "someone-else"; echo != want {
				t.Errorf("change by %s: decision %s/%s, want own_write_echo %v", u, d.Outcome, d.Reason, want)
			}
		}
	})
}
