package servicebus_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/queuetest"
	"github.com/fhirsync/fhirsync/queues/servicebus"
	"github.com/fhirsync/fhirsync/queues/servicebus/sbtest"
)

// TestContract runs the shared queue contract with the real azservicebus
// client against the fake Service Bus over TCP, on session-enabled queues
// (the contract orders messages per SessionKey). Automatic lock renewal is
// off: the contract checks that unsettled locks lapse.
func TestContract(t *testing.T) {
	t.Parallel()
	srv := sbtest.Start(t)
	var n atomic.Int64
	queuetest.Run(t, func(t *testing.T, o queuetest.Options) queues.Queue {
		name := fmt.Sprintf("contract-%d", n.Add(1))
		srv.CreateQueue(t, sbtest.QueueConfig{Name: name, LockDuration: o.LockDuration,
			MaxDeliveryCount: o.MaxDeliveryCount, DuplicateWindow: o.DuplicateWindow, Sessions: true})
		q, err := servicebus.New(servicebus.Config{ConnectionString: srv.ConnectionString(), Sessions: true,
			MaxDeliveryCount: o.MaxDeliveryCount, AutoRenewFor: -1}, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = q.Close(context.Background()) })
		return q
	})
}

// TestContractRealNamespace runs the same suite against a real namespace
// when SERVICEBUS_CONNECTION_STRING holds a namespace connection string
// with Manage rights: each case creates its own session-enabled queue and
// deletes it afterwards. Service Bus minimums apply (5 s locks, a 20 s
// duplicate-detection window), so cases asking for less get the minimum.
func TestContractRealNamespace(t *testing.T) {
	cs := os.Getenv("SERVICEBUS_CONNECTION_STRING")
	if cs == "" {
		t.Skip("SKIPPED: contract suite against a real Azure Service Bus namespace; " +
			"set SERVICEBUS_CONNECTION_STRING to a namespace connection string with Manage rights to run it")
	}
	t.Parallel()
	ac, err := admin.NewClientFromConnectionString(cs, nil)
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	var n atomic.Int64
	run := time.Now().Unix()
	queuetest.Run(t, func(t *testing.T, o queuetest.Options) queues.Queue {
		name := fmt.Sprintf("fhirsync-contract-%d-%d", run, n.Add(1))
		seconds := func(d, floor time.Duration) *string {
			return to.Ptr(fmt.Sprintf("PT%dS", int(max(d, floor).Round(time.Second)/time.Second)))
		}
		_, err := ac.CreateQueue(t.Context(), name, &admin.CreateQueueOptions{Properties: &admin.QueueProperties{
			LockDuration:                        seconds(o.LockDuration, 5*time.Second),
			MaxDeliveryCount:                    to.Ptr(int32(o.MaxDeliveryCount)),
			RequiresDuplicateDetection:          to.Ptr(true),
			DuplicateDetectionHistoryTimeWindow: seconds(o.DuplicateWindow, 20*time.Second),
			RequiresSession:                     to.Ptr(true),
		}})
		if err != nil {
			t.Fatalf("creating queue %s: %v", name, err)
		}
		t.Cleanup(func() { _, _ = ac.DeleteQueue(context.Background(), name, nil) })
		q, err := servicebus.New(servicebus.Config{ConnectionString: cs, Sessions: true,
			MaxDeliveryCount: o.MaxDeliveryCount, AutoRenewFor: -1}, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = q.Close(context.Background()) })
		return q
	})
}
