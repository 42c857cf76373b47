package crm

import "testing"

// BenchmarkDecodeRemoteExecutionContext decodes a contact Update with its
// Target entity and pre and post images, with the tape walker ("tape") and
// the reference decoder that unmarshals level by level ("reference").
func BenchmarkDecodeRemoteExecutionContext(b *testing.B) {
	body := readSample(b, "update_contact_images.json")
	for _, bm := range []struct {
		name   string
		decode func([]byte) (*ExecutionContext, error)
	}{
		{"tape", DecodeRemoteExecutionContext},
		{"reference", refDecodeRemoteExecutionContext},
	} {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, err := bm.decode(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
