package crm

import "testing"

func TestIDOfWithoutEntityIDHeader(t *testing.T) {
	t.Parallel()
	const id = "5f1e9a3b-2c4d-ee11-be6e-000d3a5b8f21"
	tests := []struct {
		name string
		t    Target
		r    Record
		want string
	}{
		{name: "by id", t: ByID("contacts", "5F1E9A3B-2C4D-EE11-BE6E-000D3A5B8F21"), want: id},
		{name: "primary key in representation", t: ByKey("contacts", "msemr_azurefhirid", "p"),
			r: Record{"contactid": id, "msemr_azurefhirid": "p", "_parentcustomerid_value": "1b2c3d4e-5f60-ee11-be6e-000d3a5b8f21", "@odata.etag": `W/"1"`}, want: id},
		{name: "ambiguous", t: ByKey("contacts", "msemr_azurefhirid", "p"),
			r: Record{"contactid": id, "otherid": "1b2c3d4e-5f60-ee11-be6e-000d3a5b8f21"}, want: ""},
		{name: "none", t: ByKey("contacts", "msemr_azurefhirid", "p"), r: Record{"msemr_azurefhirid": "p"}, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := idOf(tt.t, tt.r); got != tt.want {
				t.Fatalf("idOf = %q, want %q", got, tt.want)
			}
		})
	}
}
