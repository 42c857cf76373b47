package crmserver

// msemr_codeableconcept is the data model's table of coded concepts
// (Foundational/Commoncore/CodeableConcept.cdm.json in
// github.com/microsoft/CDM schemaDocuments/Healthcare, rendered in
// MicrosoftDocs/common-data-model-and-service at commit fb44b338,
// common-data-model/schema/core/industryCommon/Healthcare/Foundational/Commoncore/CodeableConcept.md):
// msemr_name (text 100, required, the primary name), msemr_code (text 100,
// required, "Code defined by a terminology system"), msemr_text (text
// 2000, "Plain text representation of the concept") and msemr_type, a
// choice of what the concept codes, with the 163 options of the entity
// file. The data model has no code-system column and defines no alternate
// key on the table; the key on msemr_code and msemr_type here is the one
// maps/starter/SOURCES.md asks an administrator to add, so that two
// writers creating the same concept at once cannot make it twice.
func codeableConceptTable() *Entity {
	code := str("msemr_code", 100)
	code.Required = true
	name := name100()
	name.Required = true
	e := childTable("msemr_codeableconcept", "msemr_codeableconcepts", "msemr_codeableconceptid", "msemr_name",
		name, code, str("msemr_text", 2000), picklist("msemr_type", conceptTypes()...))
	e.Keys = []Key{{LogicalName: "fhirsync_codetype_key", Attributes: []string{"msemr_code", "msemr_type"}}}
	return e
}

// conceptTypes are msemr_codeableconcept.msemr_type's options, in the order
// and with the values CodeableConcept.cdm.json gives them (Body Structure
// is 100000000; the others number from 935000000).
func conceptTypes() []Option {
	return []Option{
		{935000000, "Action Participant Role"}, {935000001, "Action Reason"}, {935000002, "Activity Reason"},
		{935000003, "Additional Dosage Instruction"}, {935000004, "Additive Code"},
		{935000005, "Administration Method Code"}, {935000006, "Administration Site Code"},
		{935000007, "Admit Source"}, {935000008, "Allergy Intolerance"}, {935000009, "Animal Breed"},
		{935000010, "Animal Gender"}, {935000011, "Animal Species"}, {935000012, "As Needed Reason Code"},
		{100000000, "Body Structure"}, {935000013, "Care Plan Activity"},
		{935000014, "Care Plan Activity Category"}, {935000015, "Care Plan Activity Outcome"},
		{935000016, "Care Plan Category"}, {935000017, "Care Team Category"}, {935000018, "Clinical Finding"},
		{935000019, "Clinical Impression Code"}, {935000020, "Clinical Impression Prognosis"},
		{935000021, "Communication Category"}, {935000022, "Condition Category Code"},
		{935000023, "Condition Code"}, {935000024, "Condition Outcome Code"}, {935000025, "Condition Severity"},
		{935000026, "Condition Stage"}, {935000027, "Contact Entity Type"}, {935000028, "Contact Role"},
		{935000029, "Data Requirement Code Filter Value Code"}, {935000030, "Definition Topic"},
		{935000031, "Detected Issue"}, {935000032, "Device Component Operational Status"},
		{935000033, "Device Component Parameter Group"}, {935000034, "Device Metric Type"},
		{935000035, "Device Safety"}, {935000036, "Device Specification Spec Type"}, {935000037, "Device Type"},
		{935000038, "Diagnosis Role"}, {935000039, "Diagnostic Report"}, {935000040, "Diet"},
		{935000041, "Diet Code"}, {935000042, "Discharge Disposition"}, {935000043, "Encounter Reason Code"},
		{935000044, "Encounter Type"}, {935000045, "Endpoint Payload Type"},
		{935000046, "Enteral Formula Additive Type Code"}, {935000047, "Enteral Formula Type Code"},
		{935000048, "Enteral Route Code"}, {935000049, "Episode Of Care Type"}, {935000050, "Event History"},
		{935000051, "Family History Not Done Reason"}, {935000053, "Family Member"}, {935000054, "FHIR Type"},
		{935000055, "Financial Account"}, {935000056, "Fluid Consistency Type Code"},
		{935000057, "Food Type Code"}, {935000058, "Form Code"}, {935000059, "Goal Category"},
		{935000060, "Goal Priority"}, {935000061, "Goal Start Event"}, {935000062, "Goal Target Detail"},
		{935000063, "Group"}, {935000064, "Imaging Study"}, {935000065, "Immunization Request"},
		{935000066, "Investigation Type"}, {935000067, "Jurisdiction"}, {935000068, "Language"},
		{935000070, "Library"}, {935000071, "Link Type"}, {935000072, "Location Type"}, {935000073, "LOINC Code"},
		{935000074, "Medication Administration Category"}, {935000075, "Medication As Needed Reason Code"},
		{935000076, "Medication Code"}, {935000077, "Medication Container"}, {935000078, "Medication Ingredient"},
		{935000079, "Medication Package Content"}, {935000080, "Medication Request Category"},
		{935000081, "Medication Statement"}, {935000082, "Nutrient Modifier Code"},
		{935000083, "Observation Category Code"}, {935000084, "Observation Component Value"},
		{935000085, "Observation Interpretation Code"}, {935000086, "Observation Method"},
		{935000087, "Observation Reference Range Applies To Code"},
		{935000088, "Observation Reference Range Meaning Code"}, {935000089, "Observation Value Absent Reason"},
		{935000090, "Observation Value Code"}, {935000091, "Participant Role"}, {935000092, "Participant Type"},
		{935000069, "Referral Type"}, {935000093, "Participation Mode"}, {935000094, "Patient Referral Type"},
		{935000095, "Patient Relationship Type"}, {935000096, "Plan Definition Action Code"},
		{935000097, "Plan Definition Action Reason"}, {935000098, "Plan Definition Goal Target"},
		{935000099, "Practice Setting Code"}, {935000100, "Practitioner Role"},
		{935000101, "Practitioner Specialty"}, {935000102, "Priority"}, {935000103, "Procedure Category Code"},
		{935000104, "Procedure Code"}, {935000105, "Procedure Device Action Code"},
		{935000106, "Procedure Follow up Code"}, {935000107, "Procedure Outcome Code"},
		{935000108, "Procedure Performer Role Code"}, {935000109, "Procedure Reason Code"},
		{935000110, "Provenance"}, {935000052, "Qualification Code"}, {935000111, "Quantity Unit Code"},
		{935000112, "Questionnaire"}, {935000113, "Questionnaire Response"}, {935000114, "Re-Admission Indicator"},
		{935000116, "Reason Medication Given Code"}, {935000117, "Reason Medication Not Given Code"},
		{935000118, "Referral Method"}, {935000119, "Request Group Action Code"},
		{935000120, "Request Group Reason Code"}, {935000121, "Request Intent"}, {935000122, "Resource Type"},
		{935000123, "Risk Assessment Code"}, {935000124, "Risk Assessment Method"},
		{935000125, "Risk Assessment Outcome"}, {935000126, "Risk Assessment Reason Code"},
		{935000127, "Route Code"}, {935000128, "Sequence"}, {935000129, "Service Category"},
		{935000130, "Service Characteristic"}, {935000131, "Service Delivery Location Role Type"},
		{935000132, "Service Eligibility"}, {935000133, "Service Provision Condition"},
		{935000134, "Service Type"}, {935000135, "Snomed CT Medication Codes"}, {935000136, "Special Arrangement"},
		{935000137, "Special Courtesy"}, {935000138, "Specialty"}, {935000139, "Specimen Collection Method"},
		{935000140, "Specimen Container"}, {935000141, "Specimen Processing Procedure"},
		{935000142, "Specimen Type"}, {935000143, "Structure Map"},
		{935000144, "Substance Admin Substitution Reason"}, {935000145, "Substance Category Code"},
		{935000146, "Substance Code"}, {935000147, "Supplement Type Code"}, {935000148, "Symptom Code"},
		{935000149, "Task Business Status"}, {935000150, "Task Code"}, {935000151, "Task Input Parameter Type"},
		{935000152, "Task Output Parameter Type"}, {935000153, "Task Performer Type"}, {935000154, "Task Reason"},
		{935000155, "Task Status Reason"}, {935000156, "Texture Modified Food Type Code"},
		{935000157, "Texture Modifier Code"}, {935000158, "Topic"}, {935000159, "Use Context"},
		{935000160, "Value Set"}, {935000161, "Vision Prescription Product Code"},
		{935000162, "Vision Prescription Reason Code"},
	}
}
