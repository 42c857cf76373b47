package admin

import "net/http"

type dashboardData struct {
	Sections []navItem
	PHI      bool
}

func (a *app) dashboard(w http.ResponseWriter, r *http.Request) {
	u, _ := currentUser(r)
	var sections []navItem
	for _, n := range a.nav(u) {
		if n.Path != "/" {
			sections = append(sections, n)
		}
	}
	a.render(w, r, http.StatusOK, "dashboard", "Dashboard", dashboardData{Sections: sections, PHI: u.can(permPHI)})
}
