//! The built-in templates: data only (docs/features/templates.md says what each sets
//! and why). Their ids are fixed; none carries an IP allow-list.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use uuid::Uuid;

use super::{PolicyPreset, Preset, RetentionPreset, SecurityPreset, Template};
use crate::domain::governance::approvals::ApprovalAction;

/// Fixed id of `ENTERPRISE_STARTER` (a v7 layout with a zero timestamp, which no generated id
/// ever has: custom templates cannot collide with built-ins).
pub const ENTERPRISE_STARTER_ID: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0001);
/// Fixed id of `FINANCIAL_SERVICES`.
pub const FINANCIAL_SERVICES_ID: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0002);
/// Fixed id of `HEALTHCARE`.
pub const HEALTHCARE_ID: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0003);
/// Fixed id of `GOVERNMENT`.
pub const GOVERNMENT_ID: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0004);

fn strings(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_string()).collect())
}

fn actions(items: &[ApprovalAction]) -> Option<Vec<String>> {
    Some(items.iter().map(|a| a.as_str().to_string()).collect())
}

fn quotas(items: &[(&str, i64)]) -> BTreeMap<String, i64> {
    items.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
}

/// Executable and script formats no built-in accepts.
const EXECUTABLES: [&str; 14] = [
    ".exe",
    ".dll",
    ".msi",
    ".bat",
    ".cmd",
    ".com",
    ".scr",
    ".ps1",
    ".vbs",
    ".jar",
    "application/x-msdownload",
    "application/x-msi",
    "application/x-sh",
    "application/java-archive",
];

/// Documents and images a regulated workspace exchanges (plus DICOM for healthcare).
const DOCUMENTS: [&str; 14] = [
    "application/pdf",
    "image/png",
    "image/jpeg",
    "image/tiff",
    "text/plain",
    "text/csv",
    ".pdf",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".txt",
    ".csv",
];

/// The built-in templates (see docs/features/templates.md, "Built-in presets", for the reasons).
pub static BUILT_INS: LazyLock<[Template; 4]> = LazyLock::new(|| {
    use ApprovalAction as A;
    let builtin = |id, key: &str, name: &str, description: &str, preset| Template {
        id,
        workspace_id: None,
        key: key.to_string(),
        name: name.to_string(),
        description: Some(description.to_string()),
        preset,
        created_at: None,
    };
    let healthcare_uploads: Vec<&str> = DOCUMENTS
        .iter()
        .copied()
        .chain(["application/dicom", ".dcm"])
        .collect();
    [
        builtin(
            ENTERPRISE_STARTER_ID,
            "ENTERPRISE_STARTER",
            "Enterprise starter",
            "Sensible defaults for a company workspace: 12-hour sessions, API keys that expire \
             within a year, approvals for deleting organizations and changing security settings, \
             one year of audit logs.",
            Preset {
                policy: PolicyPreset {
                    mfa_required: Some(false),
                    session_timeout_minutes: Some(Some(720)),
                    api_keys_allowed: Some(true),
                    api_key_max_lifetime_days: Some(Some(365)),
                    api_key_max_count: Some(Some(50)),
                    external_integrations_allowed: Some(true),
                    allowed_upload_types: strings(&[]),
                    blocked_upload_types: strings(&EXECUTABLES),
                    approval_required_for: actions(&[
                        A::DeleteOrganization,
                        A::ChangeSecuritySettings,
                    ]),
                    approval_expiry_hours: Some(72),
                    audit_billing_reads: Some(false),
                    ..Default::default()
                },
                security: SecurityPreset {
                    require_tls: Some(false),
                    encryption_at_rest_required: Some(false),
                    vpn_required: Some(false),
                    ..Default::default()
                },
                quotas: quotas(&[("members", 500)]),
                retention: RetentionPreset {
                    audit_logs_days: Some(365),
                    usage_events_days: Some(730),
                    execution_logs_days: Some(365),
                    workflow_data_days: Some(730),
                    user_data_days: Some(365),
                    archive_before_delete: Some(false),
                },
            },
        ),
        builtin(
            FINANCIAL_SERVICES_ID,
            "FINANCIAL_SERVICES",
            "Financial services",
            "Segregation of duties and record keeping for regulated finance (SOX, SEC 17a-4, \
             PCI DSS minded): MFA, 30-minute sessions, TLS, approvals for subscription changes \
             and cancellations, organization deletion, owner promotion and security changes, \
             90-day API keys, audited billing reads, seven years of records, archived.",
            Preset {
                policy: PolicyPreset {
                    mfa_required: Some(true),
                    session_timeout_minutes: Some(Some(30)),
                    api_keys_allowed: Some(true),
                    api_key_max_lifetime_days: Some(Some(90)),
                    api_key_max_count: Some(Some(25)),
                    external_integrations_allowed: Some(true),
                    allowed_upload_types: strings(&[]),
                    blocked_upload_types: strings(&EXECUTABLES),
                    approval_required_for: actions(&[
                        A::DeleteOrganization,
                        A::ChangeSubscription,
                        A::CancelSubscription,
                        A::PromoteToOwner,
                        A::ChangeSecuritySettings,
                    ]),
                    approval_expiry_hours: Some(48),
                    audit_billing_reads: Some(true),
                    ..Default::default()
                },
                security: SecurityPreset {
                    require_tls: Some(true),
                    encryption_at_rest_required: Some(true),
                    vpn_required: Some(false),
                    ..Default::default()
                },
                quotas: quotas(&[("members", 2000)]),
                retention: RetentionPreset {
                    audit_logs_days: Some(2555),
                    usage_events_days: Some(2555),
                    execution_logs_days: Some(2555),
                    workflow_data_days: Some(2555),
                    user_data_days: Some(2555),
                    archive_before_delete: Some(true),
                },
            },
        ),
        builtin(
            HEALTHCARE_ID,
            "HEALTHCARE",
            "Healthcare",
            "HIPAA minded: MFA, 15-minute sessions, TLS, encryption at rest declared, external \
             integrations off (no protected health information leaves through webhooks, Slack \
             or e-mail), approvals for security changes, API keys, organization deletion and \
             owner promotion, clinical document types only, seven years of audit logs.",
            Preset {
                policy: PolicyPreset {
                    mfa_required: Some(true),
                    session_timeout_minutes: Some(Some(15)),
                    api_keys_allowed: Some(true),
                    api_key_max_lifetime_days: Some(Some(90)),
                    api_key_max_count: Some(Some(20)),
                    external_integrations_allowed: Some(false),
                    allowed_upload_types: strings(&healthcare_uploads),
                    blocked_upload_types: strings(&EXECUTABLES),
                    approval_required_for: actions(&[
                        A::DeleteOrganization,
                        A::PromoteToOwner,
                        A::CreateApiKey,
                        A::ChangeSecuritySettings,
                    ]),
                    approval_expiry_hours: Some(72),
                    audit_billing_reads: Some(false),
                    ..Default::default()
                },
                security: SecurityPreset {
                    require_tls: Some(true),
                    encryption_at_rest_required: Some(true),
                    vpn_required: Some(false),
                    ..Default::default()
                },
                quotas: quotas(&[("members", 2000)]),
                retention: RetentionPreset {
                    audit_logs_days: Some(2555),
                    usage_events_days: Some(730),
                    execution_logs_days: Some(2190),
                    workflow_data_days: Some(2555),
                    user_data_days: Some(2190),
                    archive_before_delete: Some(true),
                },
            },
        ),
        builtin(
            GOVERNMENT_ID,
            "GOVERNMENT",
            "Government",
            "The strictest preset (FedRAMP / NIST 800-53 minded): MFA, 15-minute sessions, TLS, \
             encryption at rest and VPN declared, external integrations off, 30-day API keys, \
             every sensitive action under approval (24-hour expiry), audited billing reads, \
             document types only, seven years of records, archived.",
            Preset {
                policy: PolicyPreset {
                    mfa_required: Some(true),
                    session_timeout_minutes: Some(Some(15)),
                    api_keys_allowed: Some(true),
                    api_key_max_lifetime_days: Some(Some(30)),
                    api_key_max_count: Some(Some(10)),
                    external_integrations_allowed: Some(false),
                    allowed_upload_types: strings(&DOCUMENTS),
                    blocked_upload_types: strings(&EXECUTABLES),
                    approval_required_for: actions(&ApprovalAction::ALL),
                    approval_expiry_hours: Some(24),
                    audit_billing_reads: Some(true),
                    ..Default::default()
                },
                security: SecurityPreset {
                    require_tls: Some(true),
                    encryption_at_rest_required: Some(true),
                    vpn_required: Some(true),
                    ..Default::default()
                },
                quotas: quotas(&[("members", 1000)]),
                retention: RetentionPreset {
                    audit_logs_days: Some(2555),
                    usage_events_days: Some(2555),
                    execution_logs_days: Some(2555),
                    workflow_data_days: Some(2555),
                    user_data_days: Some(2555),
                    archive_before_delete: Some(true),
                },
            },
        ),
    ]
});

/// The built-in template `id`.
pub fn built_in(id: Uuid) -> Option<&'static Template> {
    BUILT_INS.iter().find(|t| t.id == id)
}

pub(super) fn is_built_in_key(key: &str) -> bool {
    BUILT_INS.iter().any(|t| t.key == key)
}
