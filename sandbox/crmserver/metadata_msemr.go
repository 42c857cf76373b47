package crmserver

import (
	"fmt"
	"strings"
)

// The Microsoft Cloud for Healthcare (Provider data model, formerly the
// Healthcare data model) tables the clinical starter maps write. Column
// names, types, lengths and option values follow Microsoft's Common Data
// Model entity definitions, github.com/microsoft/CDM schemaDocuments/
// Healthcare/ (Foundational/Commoncore, Clinical/ClinicalCore,
// Clinical/ClinicalCareTeam, Diagnostics/DiagnosticReport,
// Financial/Financial, Administration/AdministrationCore and
// AzureAPIforFHIRsupport/SyncAgentCDMUpdates for the msemr_azurefhirid,
// msemr_azurefhirversion and msemr_azurefhirlastupdatedon columns the FHIR
// Sync Agent's solution added), rendered at
// https://learn.microsoft.com/common-data-model/schema/core/industrycommon/healthcare/
// (MicrosoftDocs/common-data-model-and-service). maps/starter/SOURCES.md
// names the file of each table. Only the columns the starter maps use, and
// their documented neighbours of the same FHIR element, are listed; a
// decimal column without a documented precision has Dataverse's default
// of 2.

// fhirSyncColumns are the columns the FHIR Sync Agent's solution added to
// each table it synchronised (SyncAgentCDMUpdates/*.cdm.json): the FHIR id
// (38 characters), version (50) and last update.
func fhirSyncColumns() []*Attribute {
	return []*Attribute{str("msemr_azurefhirid", 38), str("msemr_azurefhirversion", 50), datetime("msemr_azurefhirlastupdatedon")}
}

// hcValues is an option set whose values are given (the data model mostly
// numbers from 935000000, with later additions elsewhere).
func hcValues(pairs ...any) []Option {
	out := make([]Option, 0, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, Option{Value: pairs[i].(int), Label: pairs[i+1].(string)})
	}
	return out
}

// healthTable builds a data-model table: platform columns, the given
// columns, the FHIR Sync columns with the msemr_azurefhirid alternate key,
// and a many-to-one relationship for every single-target lookup (navigation
// property named as the lookup, as the data model's relationships are).
func healthTable(logical, set, primaryID, primaryName string, cols ...*Attribute) *Entity {
	e := &Entity{
		LogicalName: logical, EntitySetName: set, PrimaryID: primaryID, PrimaryName: primaryName,
		ChangeTracking: true,
		Attributes:     append(append(platformAttributes(primaryID), cols...), fhirSyncColumns()...),
		Keys:           fhirIDKey(),
	}
	for _, a := range cols {
		if a.Type == TypeLookup && len(a.Targets) == 1 {
			e.ManyToOne = append(e.ManyToOne, Relationship{
				SchemaName: fmt.Sprintf("%s_%s_%s", a.Targets[0], logical, a.LogicalName),
				Attribute:  a.LogicalName, Target: a.Targets[0], NavigationProperty: a.LogicalName,
			})
		}
	}
	return e
}

// childTable is a data-model table that holds rows of a parent record
// (telecoms, coded concepts, predictions): no FHIR Sync columns, as the
// rows have no FHIR resource of their own.
func childTable(logical, set, primaryID, primaryName string, cols ...*Attribute) *Entity {
	e := healthTable(logical, set, primaryID, primaryName, cols...)
	e.Attributes = e.Attributes[:len(e.Attributes)-len(fhirSyncColumns())]
	e.Keys = nil
	return e
}

// medicalIdentifierColumns adds to msemr_medicalidentifier the documented
// columns (Medication/MedicationCore/MedicalIdentifier.cdm.json) that the
// care plan's identifiers use: the value (250), the use, the period and the
// lookups to a care plan, an encounter and an assignee contact. The columns
// the Patient map uses are kept as they are (maps/starter/SOURCES.md names
// the difference).
func medicalIdentifierColumns(e *Entity) {
	cols := []*Attribute{
		str("msemr_value", 250),
		picklist("msemr_use", hcOptions("Usual", "Official", "Temp", "Secondary")...),
		datetime("msemr_periodstart"), datetime("msemr_periodend"),
		lookup("msemr_careplanmedicalidentifierid", "msemr_careplan"),
		lookup("msemr_encountermedicalidentifierid", "msemr_encounter"),
		lookup("msemr_assignee", "contact"),
	}
	e.Attributes = append(e.Attributes, cols...)
	for _, a := range cols {
		if a.Type == TypeLookup {
			e.ManyToOne = append(e.ManyToOne, Relationship{
				SchemaName: fmt.Sprintf("%s_%s_%s", a.Targets[0], e.LogicalName, a.LogicalName),
				Attribute:  a.LogicalName, Target: a.Targets[0], NavigationProperty: a.LogicalName,
			})
		}
	}
}

func name100() *Attribute { return str("msemr_name", 100) }

var (
	contextType = hcValues(hcBase, "Encounter", hcBase+1, "Episode Of Care")
	subjectType = hcValues(hcBase, "Patient", hcBase+1, "Group")
)

// healthcareEntities are the data-model tables of the clinical starter
// maps, plus the two custom tables fhirsync documents for FHIR resources
// the data model has no table for (Flag, Communication).
func healthcareEntities() []*Entity {
	appointment := healthTable("msemr_appointmentemr", "msemr_appointmentemrs", "activityid", "subject",
		// Appointment (EMR) is an activity table (Foundational/Commoncore/AppointmentEMR.cdm.json).
		str("subject", 200),
		picklist("msemr_appointmentstatus", hcOptions("Proposed", "Pending", "Booked", "Arrived", "Fulfilled", "Cancelled", "No Show", "Entered In Error", "Checked-In", "Waitlist")...),
		str("msemr_description", 100), str("msemr_comment", 2000), str("msemr_patientinstruction", 2000),
		str("msemr_supportinginformation", 2000),
		datetime("msemr_starttime"), datetime("msemr_endtime"), datetime("msemr_appointmentcreationdate"),
		integer("msemr_minutesduration"), integer("msemr_priority"),
		lookup("msemr_actorpatient", "contact"), lookup("msemr_actorpractitioner", "contact"),
		lookup("msemr_actorlocation", "msemr_location"), lookup("msemr_actordevice", "msemr_device"),
	)
	condition := healthTable("msemr_condition", "msemr_conditions", "msemr_conditionid", "msemr_name",
		name100(),
		picklist("msemr_clinicalstatus", hcValues(hcBase, "Active", hcBase+1, "Recurrence", hcBase+2, "Inactive", hcBase+3, "Remission", hcBase+4, "Resolved", 645490001, "Relapse")...),
		picklist("msemr_verificationstatus", hcOptions("Provisional", "Differential", "Confirmed", "Refuted", "Entered-In-Error", "Unknown")...),
		datetime("msemr_onsetdate"), datetime("msemr_asserteddate"), datetime("msemr_abatementdate"),
		str("msemr_onsetstring", 100), str("msemr_abatementstring", 100),
		picklist("msemr_subjecttype", subjectType...),
		lookup("msemr_subjecttypepatient", "contact"), lookup("msemr_asserter", "contact"),
		lookup("msemr_encounter", "msemr_encounter"),
		// Lookups to msemr_codeableconcept: code, category, severity.
		lookup("msemr_conditioncode", "msemr_codeableconcept"), lookup("msemr_category", "msemr_codeableconcept"),
		lookup("msemr_severity", "msemr_codeableconcept"),
	)
	procedure := healthTable("msemr_procedure", "msemr_procedures", "msemr_procedureid", "msemr_description",
		str("msemr_description", 100), str("msemr_procedureidentifier", 100),
		picklist("msemr_status", hcOptions("Preparation", "In Progress", "Suspended", "Aborted", "Completed", "Entered in Error", "Unknown")...),
		datetime("msemr_datetime"), datetime("msemr_performedstartdate"), datetime("msemr_performedenddate"),
		boolean("msemr_notdone"),
		picklist("msemr_subjecttype", hcValues(hcBase, "Patient", hcBase+1, "Patient Group")...),
		lookup("msemr_patient", "contact"), lookup("msemr_encounter", "msemr_encounter"),
		lookup("msemr_location", "msemr_location"),
		// Lookups to msemr_codeableconcept: the code (msemr_codeableconcept;
		// msemr_codenew points at msemr_medication) and the category.
		lookup("msemr_codeableconcept", "msemr_codeableconcept"), lookup("msemr_category", "msemr_codeableconcept"),
	)
	allergy := healthTable("msemr_allergyintolerance", "msemr_allergyintolerances", "msemr_allergyintoleranceid", "msemr_name",
		name100(), str("msemr_code", 100),
		picklist("msemr_criticality", hcOptions("Low Risk", "High Risk", "Unable to Assess Risk")...),
		picklist("msemr_type", hcOptions("Allergy", "Intolerance")...),
		picklist("msemr_verificationstatus", hcOptions("Unconfirmed", "Confirmed", "Refuted", "Entered In Error")...),
		lookup("msemr_patient", "contact"),
	)
	medicationRequest := healthTable("msemr_medicationrequest", "msemr_medicationrequests", "msemr_medicationrequestid", "msemr_name",
		name100(), str("msemr_identifier", 100), str("msemr_groupidentifier", 100),
		picklist("msemr_status", hcOptions("Active", "On Hold", "Cancelled", "Completed", "Entered In Error", "Stopped", "Draft", "Unknown")...),
		picklist("msemr_intent", hcValues(hcBase, "Proposal", hcBase+1, "Plan", hcBase+2, "Order", hcBase+3, "Instance Order", 645490001, "Original-Order", 645490002, "Reflect-Order", 645490003, "Option")...),
		picklist("msemr_priority", hcOptions("Routine", "Urgent", "Stat", "ASAP")...),
		datetime("msemr_authoredon"),
		integer("msemr_dispenserequestnumberofrepeatsallowed"), integer("msemr_dispenserequestquantity"),
		datetime("msemr_dispenserequestvalidityperiodstartdate"), datetime("msemr_dispenserequestvalidityperiodenddate"),
		decimalAttr("msemr_expectedsupplyduration"), boolean("msemr_substitutionallowed"),
		picklist("msemr_medicationtype", hcOptions("Medication Code", "Medication Reference")...),
		lookup("msemr_subjecttypepatient", "contact"), lookup("msemr_contexttypeencounter", "msemr_encounter"),
		lookup("msemr_medicationreferencenew", "msemr_medication"), lookup("msemr_requesteragenttypepractitioner", "contact"),
		lookup("msemr_recorder", "contact"),
		// Lookups to msemr_codeableconcept: the medication as a code, the category.
		lookup("msemr_medicationtypecodeableconcept", "msemr_codeableconcept"), lookup("msemr_category", "msemr_codeableconcept"),
	)
	report := healthTable("msemr_diagnosticreport", "msemr_diagnosticreports", "msemr_diagnosticreportid", "msemr_conclusion",
		str("msemr_conclusion", 100),
		picklist("msemr_status", hcValues(491300000, "Registered", 491300001, "Partial", 491300002, "Preliminary", 491300003, "Final",
			hcBase, "Amended", hcBase+1, "Corrected", hcBase+2, "Appended", hcBase+3, "Cancelled", hcBase+4, "Entered-in-error", hcBase+5, "Unknown")...),
		datetime("msemr_effectivestartdatetime"), datetime("msemr_effectiveenddatetime"), datetime("msemr_issued"),
		lookup("msemr_subjectpatient", "contact"), lookup("msemr_encounter", "msemr_encounter"),
		lookup("msemr_subjectlocation", "msemr_location"),
		lookup("msemr_code", "msemr_codeableconcept"), // the report's code
	)
	carePlan := healthTable("msemr_careplan", "msemr_careplans", "msemr_careplanid", "msemr_title",
		str("msemr_title", 100), str("msemr_plandescription", 100), str("msemr_careplanidentifier", 100),
		picklist("msemr_planstatus", hcOptions("Pending", "Active", "Suspended", "Completed", "Entered In Error", "Cancelled", "Unknown")...),
		picklist("msemr_planintent", hcOptions("Proposal", "Plan", "Order", "Option")...),
		datetime("msemr_planstartdate"), datetime("msemr_planenddate"),
		picklist("msemr_subjecttype", subjectType...), picklist("msemr_contexttype", contextType...),
		lookup("msemr_patientidentifier", "contact"), lookup("msemr_encounteridentifier", "msemr_encounter"),
	)
	claim := healthTable("msemr_claim", "msemr_claims", "msemr_claimid", "msemr_name",
		name100(),
		picklist("msemr_use", hcOptions("Complete (Bill or Claim)", "Proposed (Pre-Authorization)", "Exploratory (Pre Determination)")...),
		datetime("msemr_billableperiodstart"), datetime("msemr_billableperiodend"),
		lookup("msemr_patient", "contact"), lookup("msemr_insurer", "account"), lookup("msemr_organization", "account"),
		lookup("msemr_providerpractitioner", "contact"), lookup("msemr_entererpractitioner", "contact"),
		lookup("msemr_facility", "msemr_location"),
	)
	relatedPerson := healthTable("msemr_relatedperson", "msemr_relatedpersons", "msemr_relatedpersonid", "msemr_name",
		name100(), boolean("msemr_active"),
		datetime("msemr_relatedpersonperiodstartdate"), datetime("msemr_relatedpersonperiodenddate"),
		lookup("msemr_patient", "contact"), lookup("msemr_relatedperson", "contact"),
	)
	location := healthTable("msemr_location", "msemr_locations", "msemr_locationid", "msemr_name",
		name100(), str("msemr_description", 100), str("msemr_locationnumber", 100),
		str("msemr_locationalias1", 100), str("msemr_locationalias2", 100), str("msemr_locationalias3", 100),
		picklist("msemr_status", hcOptions("Active", "Suspended", "Inactive")...),
		picklist("msemr_mode", hcOptions("instance", "Kind")...),
		picklist("msemr_operationalstatus", hcOptions("Closed", "Housekeeping", "Isolated", "Contaminated", "Occupied", "Unoccupied")...),
		str("msemr_addressline1", 100), str("msemr_addressline2", 100), str("msemr_addressline3", 100),
		str("msemr_addresscity", 100), str("msemr_addressstate", 100), str("msemr_addresspostalcode", 100),
		str("msemr_addresscountry", 100), str("msemr_addresstext", 100), str("msemr_addressdistinct", 100),
		picklist("msemr_addressuse", hcOptions("Home", "Work", "Temp", "Old")...),
		picklist("msemr_addresstype", hcOptions("Postal", "Physical", "Both")...),
		decimalAttr("msemr_locationpositionlatitude"), decimalAttr("msemr_locationpositionlongitude"), decimalAttr("msemr_locationpositionaltitude"),
		lookup("msemr_managingorganization", "account"), lookup("msemr_partof", "msemr_location"),
	)
	medication := healthTable("msemr_medication", "msemr_medications", "msemr_medicationid", "msemr_name",
		name100(), str("msemr_amount", 100), boolean("msemr_isbrand"), boolean("msemr_isoverthecounter"),
		lookup("msemr_manufacturer", "account"),
		// Lookups to msemr_codeableconcept: the medication's code and form.
		lookup("msemr_medicationcode", "msemr_codeableconcept"), lookup("msemr_form", "msemr_codeableconcept"),
	)
	medication.Attribute("statuscode").Options = append(medication.Attribute("statuscode").Options, Option{hcBase, "Entered In Error"})
	slot := healthTable("msemr_slot", "msemr_slots", "msemr_slotid", "msemr_name",
		name100(),
		picklist("msemr_status", hcOptions("Busy", "Free", "Busy-Unavailable", "Busy-Tentative", "Entered-In-Error")...),
		picklist("msemr_appointmenttypenew", hcOptions("Check Up", "Emergency", "Follow Up", "Routine", "Walk In")...),
		datetime("msemr_start"), datetime("msemr_end"), str("msemr_comment", 2000), boolean("msemr_overbooked"),
		lookup("msemr_schedule", "msemr_schedule"),
	)
	schedule := healthTable("msemr_schedule", "msemr_schedules", "msemr_scheduleid", "msemr_name",
		name100(), boolean("msemr_active"), str("msemr_comment", 100), str("msemr_schedulenumber", 100),
		datetime("msemr_planninghorizonstartdatetime"), datetime("msemr_planninghorizonenddatetime"),
		lookup("msemr_actorlocation", "msemr_location"), lookup("msemr_actorpractitioner", "contact"),
		lookup("msemr_actorpatient", "contact"), lookup("msemr_actordevice", "msemr_device"),
		// Schedule.cdm.json's actor columns also include a practitioner
		// role and a related person (the msemr_relatedperson table, where
		// the appointment participant's actor points at contact); its
		// msemr_actorhealthcareservice is left out, as the sandbox has no
		// healthcare service table.
		lookup("msemr_actorpractitionerrole", "msemr_practitionerrole"), lookup("msemr_actorrelatedperson", "msemr_relatedperson"),
	)
	careTeam := healthTable("msemr_careteam", "msemr_careteams", "msemr_careteamid", "msemr_name",
		name100(), str("msemr_careteamnumber", 100),
		picklist("msemr_careteamstatus", hcOptions("Proposed", "Active", "Suspended", "Inactive", "Entered-In-Error")...),
		datetime("msemr_periodstart"), datetime("msemr_periodend"),
		picklist("msemr_subjecttype", subjectType...), picklist("msemr_contexttype", contextType...),
		lookup("msemr_subjectpatient", "contact"), lookup("msemr_encounter", "msemr_encounter"),
	)
	participant := healthTable("msemr_careteamparticipant", "msemr_careteamparticipants", "msemr_careteamparticipantid", "msemr_description",
		str("msemr_description", 100),
		picklist("msemr_membertype", hcOptions("Practitioner", "Related Person", "Patient", "Organization", "Care Team")...),
		datetime("msemr_periodstart"), datetime("msemr_periodend"),
		lookup("msemr_careteam", "msemr_careteam"), lookup("msemr_membercareteam", "msemr_careteam"),
		lookup("msemr_memberpatient", "contact"), lookup("msemr_memberpractioner", "contact"),
		lookup("msemr_memberrelatedperson", "contact"), lookup("msemr_memberorganization", "account"),
		lookup("msemr_onbehalfof", "account"),
	)
	// msemr_contactlink is a patient's link to another patient record of
	// the same person (Patient.link): ContactLink.cdm.json of the EMR
	// accelerator (microsoft/CDM schemaDocuments/core/applicationCommon/
	// foundationCommon/crmCommon/accelerators/healthCare/
	// electronicMedicalRecords/ContactLink.cdm.json): msemr_patient (the
	// contact the link belongs to), msemr_link (the other contact),
	// msemr_linktype (a lookup to msemr_codeableconcept, "Patient Link
	// Type") and msemr_name (100, required).
	contactLink := childTable("msemr_contactlink", "msemr_contactlinks", "msemr_contactlinkid", "msemr_name",
		name100(), lookup("msemr_patient", "contact"), lookup("msemr_link", "contact"),
		lookup("msemr_linktype", "msemr_codeableconcept"),
	)
	// CareTeamParticipantRole.cdm.json documents the role's columns (code
	// 100, display 100, system 1024) but no column linking a role to its
	// participant, while the FHIR Sync Agent's "Care team participant role
	// expansion map" wrote the roles as rows under a participant row. The
	// lookup msemr_careteamparticipant is the sandbox's stand-in for that
	// link, named after the parent table as the documented child tables
	// name theirs (msemr_careteamparticipant.msemr_careteam); its name is
	// not documented.
	participantRole := childTable("msemr_careteamparticipantrole", "msemr_careteamparticipantroles", "msemr_careteamparticipantroleid", "msemr_display",
		str("msemr_code", 100), str("msemr_display", 100), str("msemr_system", 1024),
		lookup("msemr_careteamparticipant", "msemr_careteamparticipant"),
	)
	device := healthTable("msemr_device", "msemr_devices", "msemr_deviceid", "msemr_name",
		name100(), str("msemr_devicenumber", 100),
		picklist("msemr_devicestatus", hcOptions("Active", "InActive", "Entered-In-Error", "Unknown")...),
		str("msemr_manufacturer", 128), str("msemr_model", 128), str("msemr_lotnumber", 128), str("msemr_version", 100),
		str("msemr_udi", 256), str("msemr_url", 1024),
		datetime("msemr_expirationdate"), datetime("msemr_manufacturerdate"),
		lookup("msemr_patient", "contact"), lookup("msemr_location", "msemr_location"),
	)
	risk := healthTable("msemr_riskassessment", "msemr_riskassessments", "msemr_riskassessmentid", "msemr_name",
		name100(), str("msemr_riskassessmentnumber", 100),
		picklist("msemr_status", hcOptions("Registered", "Preliminary", "Final", "Amended", "Corrected", "Cancelled", "Entered in Error", "Unknown")...),
		datetime("msemr_occurrencedatetime"), datetime("msemr_occurrencestartdate"), datetime("msemr_occurrenceenddate"),
		picklist("msemr_occurrencetype", hcOptions("Time", "Period")...),
		str("msemr_comment", 100), str("msemr_mitigation", 100),
		str("msemr_basis", 2000), str("msemr_basedon", 2000), str("msemr_parent", 2000),
		picklist("msemr_subjecttype", subjectType...), picklist("msemr_contexttype", contextType...),
		lookup("msemr_subjectpatient", "contact"), lookup("msemr_contextencounter", "msemr_encounter"),
		lookup("msemr_condition", "msemr_condition"), lookup("msemr_performerpractitioner", "contact"),
	)
	prediction := childTable("msemr_riskassessmentprediction", "msemr_riskassessmentpredictions", "msemr_riskassessmentpredictionid", "msemr_name",
		// Documented in the EMR accelerator's RiskAssessmentPrediction.cdm.json.
		name100(), str("msemr_rationale", 100),
		decimalAttr("msemr_probabilitydecimal"), decimalAttr("msemr_probabilitylowerlimit"), decimalAttr("msemr_probabilityupperlimit"),
		decimalAttr("msemr_relativerisk"), decimalAttr("msemr_lowerlimit"), decimalAttr("msemr_upperlimit"),
		picklist("msemr_probabilitytype", hcOptions("Decimal", "Range")...),
		picklist("msemr_qualitativerisk", hcOptions("Negligible likelihood", "Low likelihood", "Moderate likelihood", "High likelihood", "Certain")...),
		picklist("msemr_periodtype", hcOptions("Period", "Range")...),
		datetime("msemr_startdate"), datetime("msemr_enddate"),
		lookup("msemr_riskassessment", "msemr_riskassessment"),
	)
	goal := healthTable("msemr_goal", "msemr_goals", "msemr_goalid", "msemr_name",
		name100(), str("msemr_goalnumber", 100),
		picklist("msemr_goalstatus", hcOptions("Proposed", "Accepted", "Planned", "In Progress", "On Target", "Ahead of Target", "Behind Target", "Sustaining", "Achieved", "On Hold", "Cancelled", "Entered In Error", "Rejected")...),
		date("msemr_goalstatusdate"), str("msemr_goalstatusreason", 100), date("msemr_goalstartdate"),
		picklist("msemr_goalstarttype", hcOptions("Date", "Codeable Concept")...),
		picklist("msemr_goalsubjecttype", hcOptions("Patient", "Group", "Organization")...),
		picklist("msemr_goalexpressedbytype", hcOptions("Patient", "Practitioner", "Related Person")...),
		picklist("msemr_goaltargetdetailtype", hcOptions("Quantity", "Range", "Codeable Concept")...),
		decimalAttr("msemr_goaltargetdetaillowervalue"), decimalAttr("msemr_goaltargetdetailuppervalue"),
		decimalAttr("msemr_goaltargetdetailquantityvalue"), str("msemr_goaltargetdetailquantityunit", 100),
		str("msemr_goaltargetdetailquantitysystem", 100),
		date("msemr_goaltargetmeasurevalueduedate"),
		lookup("msemr_goalsubjectpatient", "contact"), lookup("msemr_goalexpressedbypatient", "contact"),
		lookup("msemr_goalexpressedbypractitioner", "contact"), lookup("msemr_goalsubjectorganization", "account"),
	)
	practitionerRole := healthTable("msemr_practitionerrole", "msemr_practitionerroles", "msemr_practitionerroleid", "msemr_name",
		name100(), str("msemr_practitionerrolenumber", 100),
		datetime("msemr_periodstartdatetime"), datetime("msemr_periodenddatetime"),
		str("msemr_availabilityexceptions", 100), str("msemr_notavailabledescription", 100),
		datetime("msemr_notavailablestartdatetime"), datetime("msemr_notavailableenddatetime"),
		lookup("msemr_practitioner", "contact"), lookup("msemr_organization", "account"),
	)
	procedureRequest := healthTable("msemr_procedurerequest", "msemr_procedurerequests", "msemr_procedurerequestid", "msemr_name",
		name100(), str("msemr_procedurerequestnumber", 100), str("msemr_requisition", 100),
		picklist("msemr_status", hcOptions("Draft", "Active", "Suspended", "Cancelled", "Completed", "Entered in Error", "Unknown")...),
		picklist("msemr_intent", hcOptions("Proposal", "Plan", "Order")...),
		picklist("msemr_priority", hcOptions("Routine", "Urgent", "ASAP", "STAT")...),
		datetime("msemr_authoredon"), datetime("msemr_occurencedatetime"),
		datetime("msemr_occurenceperiodstartdate"), datetime("msemr_occurenceperiodenddate"),
		boolean("msemr_donotperform"), boolean("msemr_asneededboolean"),
		picklist("msemr_subjecttype", hcValues(hcBase, "Patient", hcBase+1, "Group", hcBase+2, "Device", hcBase+3, "Location")...),
		lookup("msemr_subjectpatient", "contact"), lookup("msemr_subjectcontextencounter", "msemr_encounter"),
		lookup("msemr_requesteragentpractitioner", "contact"), lookup("msemr_performerpractitioner", "contact"),
	)
	coverage := healthTable("msemr_coverage", "msemr_coverages", "msemr_coverageid", "msemr_name",
		name100(),
		picklist("msemr_coveragestatus", hcOptions("Active", "Cancelled", "Draft", "Entered In Error")...),
		datetime("msemr_coveragestartdate"), datetime("msemr_coverageenddate"),
		str("msemr_dependent", 100), str("msemr_subscriberid", 100), str("msemr_network", 100),
		str("msemr_groupplan", 100), str("msemr_groupclass", 100), str("msemr_subgroup", 100),
		integer("msemr_order"), boolean("msemr_subrogation"),
		lookup("msemr_beneficiarypatient", "contact"), lookup("msemr_subscriberpatient", "contact"),
		lookup("msemr_policyholderorganization", "account"), lookup("msemr_policyholderpatient", "contact"),
	)
	telecomSystem := hcOptions("Phone", "Fax", "Email", "Pager", "URL", "SMS", "Other")
	telecomUse := hcOptions("Home", "Work", "Temp", "Old", "Mobile")
	locationTelecom := childTable("msemr_locationtelecom", "msemr_locationtelecoms", "msemr_locationtelecomid", "msemr_name",
		// Foundational/Commoncore/LocationTelecom.cdm.json
		name100(), str("msemr_locationtelecomvalue", 100),
		picklist("msemr_locationtelecomsystem", telecomSystem...), picklist("msemr_locationtelecomuse", telecomUse...),
		integer("msemr_locationtelecomrank"),
		datetime("msemr_locationtelecomperiodstartdate"), datetime("msemr_locationtelecomperiodenddate"),
		lookup("msemr_location", "msemr_location"),
	)
	roleTelecom := childTable("msemr_practitionerroletelecom", "msemr_practitionerroletelecoms", "msemr_practitionerroletelecomid", "msemr_name",
		// Administration/AdministrationCore/PractitionerRoleTelecom.cdm.json
		name100(), str("msemr_value", 100),
		picklist("msemr_system", telecomSystem...), picklist("msemr_use", telecomUse...),
		integer("msemr_rank"), datetime("msemr_periodstartdatetime"), datetime("msemr_periodenddatetime"),
		lookup("msemr_practitionerrole", "msemr_practitionerrole"),
	)
	appointmentParticipant := childTable("msemr_appointmentemrparticipant", "msemr_appointmentemrparticipants", "msemr_appointmentemrparticipantid", "msemr_name",
		// Administration/AdministrationAppointmentEMR/AppointmentEMRParticipant.cdm.json
		name100(),
		picklist("msemr_participantactortype", hcOptions("Patient", "Practitioner", "RelatedPerson", "Device", "HealthcareService", "Location")...),
		picklist("msemr_participationstatus", hcOptions("Accepted", "Declined", "Tentative", "Needs Action")...),
		picklist("msemr_required", hcOptions("Required", "Optional", "Information Only")...),
		lookup("msemr_appointmentemr", "msemr_appointmentemr"),
		lookup("msemr_actorpatient", "contact"), lookup("msemr_actorphysician", "contact"),
		lookup("msemr_actorrelatedperson", "contact"), lookup("msemr_actorlocation", "msemr_location"),
	)
	// Coded child rows: each holds one CodeableConcept of its parent as a
	// lookup to msemr_codeableconcept plus a name (files named after the
	// table under Clinical/ClinicalCore, Clinical/ClinicalCareTeam,
	// Administration/AdministrationCore and
	// Administration/AdministrationAppointmentEMR).
	conceptRows := func(logical, parent, parentTable, concept string) *Entity {
		set := logical + "s"
		if strings.HasSuffix(logical, "y") {
			set = strings.TrimSuffix(logical, "y") + "ies"
		}
		return childTable(logical, set, logical+"id", "msemr_name",
			name100(), lookup(parent, parentTable), lookup(concept, "msemr_codeableconcept"))
	}
	conditionCategory := conceptRows("msemr_conditioncategory", "msemr_condition", "msemr_condition", "msemr_category")
	careTeamCategory := conceptRows("msemr_careteamcategory", "msemr_careteam", "msemr_careteam", "msemr_category")
	carePlanCategory := conceptRows("msemr_careplancategory", "msemr_careplan", "msemr_careplan", "msemr_plancategoryidentifier")
	roleSpecialty := conceptRows("msemr_practitionerrolespecialty", "msemr_practitionerrole", "msemr_practitionerrole", "msemr_specialty")
	scheduleSpecialty := conceptRows("msemr_schedulespecialty", "msemr_schedule", "msemr_schedule", "msemr_specialty")
	slotServiceType := conceptRows("msemr_slotservicetype", "msemr_slot", "msemr_slot", "msemr_slotservicetype")
	codeableConcept := codeableConceptTable() // metadata_concept.go
	// task is Dataverse's task activity with the data model's msemr_
	// columns (Administration/AdministrationCore/Task.cdm.json extends the
	// base Task); the FHIR id column is the one fhirsync adds (the FHIR
	// Sync Agent did not sync tasks).
	task := healthTable("task", "tasks", "activityid", "subject",
		str("subject", 200), memo("description"), datetime("scheduledstart"), datetime("scheduledend"),
		datetime("actualstart"), datetime("actualend"),
		picklist("prioritycode", Option{0, "Low"}, Option{1, "Normal"}, Option{2, "High"}),
		picklist("msemr_status", hcOptions("Draft", "Requested", "Received", "Accepted", "Rejected", "Ready", "Cancelled", "In progress", "On-hold", "Failed", "Completed", "Entered-in-error")...),
		picklist("msemr_intent", hcValues(hcBase, "Proposal", hcBase+1, "Plan", hcBase+2, "Order", hcBase+3, "Reflex order", hcBase+4, "Filler order", hcBase+6, "Original-order", hcBase+5, "Instance order", hcBase+7, "Option")...),
		picklist("msemr_taskpriority", hcOptions("Routine", "Urgent", "Asap", "Stat")...),
		str("msemr_tasknumber", 100), str("msemr_groupidentifier", 100),
		str("msemr_descriptionfocus", 100), str("msemr_descriptionfor", 100), str("msemr_definitionuri", 100),
		integer("msemr_restrictionrepetitions"),
		datetime("msemr_restrictionperiodstartdate"), datetime("msemr_restrictionperiodenddate"),
		picklist("msemr_contexttype", contextType...),
		lookup("msemr_contextencounter", "msemr_encounter"),
		lookup("msemr_requesteragentpractitioner", "contact"), lookup("msemr_requesteragentpatient", "contact"),
		lookup("msemr_performerownerorganization", "account"), lookup("msemr_performerownerpractitioner", "contact"),
		lookup("msemr_performerownerpatient", "contact"),
	)
	task.Attribute("statecode").Options = []Option{{0, "Open"}, {1, "Completed"}, {2, "Canceled"}}
	task.Attribute("statuscode").Options = []Option{{2, "Not Started"}, {3, "In Progress"}, {4, "Waiting on someone else"}, {7, "Deferred"}, {5, "Completed"}, {6, "Canceled"}}
	// fhirsync_flag and fhirsync_communication are custom tables: the data
	// model has none for FHIR Flag or Communication (maps/starter/SOURCES.md
	// lists their columns for an administrator to create).
	flag := healthTable("fhirsync_flag", "fhirsync_flags", "fhirsync_flagid", "fhirsync_name",
		str("fhirsync_name", 100), str("fhirsync_identifier", 100),
		picklist("fhirsync_status", hcOptions("Active", "Inactive", "Entered in Error")...),
		str("fhirsync_code", 100), str("fhirsync_codesystem", 400), str("fhirsync_codetext", 2000),
		str("fhirsync_category", 100),
		datetime("fhirsync_periodstart"), datetime("fhirsync_periodend"),
		lookup("fhirsync_subjectpatient", "contact"), lookup("fhirsync_author", "contact"),
		lookup("fhirsync_encounter", "msemr_encounter"),
	)
	communication := healthTable("fhirsync_communication", "fhirsync_communications", "fhirsync_communicationid", "fhirsync_name",
		str("fhirsync_name", 100), str("fhirsync_identifier", 100),
		picklist("fhirsync_status", hcOptions("Preparation", "In Progress", "Not Done", "On Hold", "Stopped", "Completed", "Entered in Error", "Unknown")...),
		str("fhirsync_category", 100), &Attribute{LogicalName: "fhirsync_payload", Type: TypeMemo, MaxLength: 4000},
		datetime("fhirsync_sent"), datetime("fhirsync_received"),
		lookup("fhirsync_subjectpatient", "contact"), lookup("fhirsync_recipientpractitioner", "contact"),
		lookup("fhirsync_encounter", "msemr_encounter"),
	)
	return []*Entity{appointment, condition, procedure, allergy, medicationRequest, report, carePlan, claim,
		relatedPerson, location, medication, slot, schedule, careTeam, participant, participantRole, contactLink, device,
		risk, prediction, goal, practitionerRole, procedureRequest, coverage, task, flag, communication,
		locationTelecom, roleTelecom, appointmentParticipant, conditionCategory, careTeamCategory, carePlanCategory,
		roleSpecialty, scheduleSpecialty, slotServiceType, codeableConcept}
}
