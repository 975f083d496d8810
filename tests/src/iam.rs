//! The template's IAM roles and KMS key policies, resolved for one test deployment and
//! evaluated the way AWS authorizes a call: an explicit deny wins; a KMS key is used only as
//! its own key policy allows, either to the caller directly or, when the key policy delegates
//! to the account, as the caller's IAM policies allow; every other call as the caller's IAM
//! policies allow. The emulator enforces none of this, so the policy test records each
//! function's calls and asks this module about every one.

// Only tests call this: a template it cannot read, or a policy construct it does not model,
// must fail the test that asked, loudly, rather than be judged as allowed.
#![allow(clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value;

use crate::recorder::{ACCOUNT, AwsCall, REGION};

/// The template with parameters, pseudo parameters and the physical ids of a deployment.
#[derive(Debug, Clone)]
pub struct Deployment {
    template: Value,
    parameters: BTreeMap<String, String>,
    /// `Ref` of a resource, by logical id.
    refs: BTreeMap<String, String>,
    /// `Fn::GetAtt`, by `LogicalId.Attribute`.
    attributes: BTreeMap<String, String>,
}

/// What a function gets from the template: its environment and its role.
#[derive(Debug, Clone)]
pub struct FunctionSetUp {
    pub environment: BTreeMap<String, String>,
    pub role: String,
    pub role_arn: String,
}

fn tag_name(t: &serde_yaml_ng::value::TaggedValue) -> String {
    t.tag.to_string().trim_start_matches('!').to_owned()
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Deployment {
    /// `template` deployed with `parameters` (the rest at their defaults) as stack `stack`;
    /// resources without an entry in `refs` get their logical id as physical id.
    pub fn new(
        template: Value,
        stack: &str,
        parameters: BTreeMap<String, String>,
        refs: BTreeMap<String, String>,
        attributes: BTreeMap<String, String>,
    ) -> Self {
        let mut all = BTreeMap::new();
        if let Some(declared) = template["Parameters"].as_mapping() {
            for (name, spec) in declared {
                if let (Some(name), Some(default)) = (name.as_str(), scalar(&spec["Default"])) {
                    all.insert(name.to_owned(), default);
                }
            }
        }
        all.extend(parameters);
        for (pseudo, value) in [
            ("AWS::Region", REGION),
            ("AWS::AccountId", ACCOUNT),
            ("AWS::Partition", "aws"),
            ("AWS::URLSuffix", "amazonaws.com"),
            ("AWS::StackName", stack),
        ] {
            all.insert(pseudo.to_owned(), value.to_owned());
        }
        let mut attributes = attributes;
        let mut refs = refs;
        if let Some(resources) = template["Resources"].as_mapping() {
            for (id, resource) in resources {
                let Some(id) = id.as_str() else { continue };
                refs.entry(id.to_owned()).or_insert_with(|| id.to_owned());
                if resource["Type"].as_str() == Some("AWS::IAM::Role") {
                    attributes.entry(format!("{id}.Arn")).or_insert_with(|| role_arn(stack, id));
                }
            }
        }
        Self { template, parameters: all, refs, attributes }
    }

    /// The `AssertDescription` of every template rule this deployment's parameters break
    /// (CloudFormation refuses such a deployment before creating anything).
    pub fn broken_rules(&self) -> Vec<String> {
        let Some(rules) = self.template["Rules"].as_mapping() else { return Vec::new() };
        let mut broken = Vec::new();
        for rule in rules.values() {
            let applies = rule.get("RuleCondition").is_none_or(|c| self.truth(c));
            if !applies {
                continue;
            }
            for assertion in rule["Assertions"].as_sequence().into_iter().flatten() {
                if !self.truth(&assertion["Assert"]) {
                    let text = assertion["AssertDescription"].as_str().unwrap_or("a rule");
                    broken.push(text.split_whitespace().collect::<Vec<_>>().join(" "));
                }
            }
        }
        broken
    }

    /// The value of condition `name`.
    pub fn condition(&self, name: &str) -> bool {
        let Some(expr) = self.template["Conditions"].get(name) else {
            panic!("the template has no condition {name}");
        };
        self.truth(expr)
    }

    fn truth(&self, v: &Value) -> bool {
        let Value::Tagged(t) = v else { panic!("not a condition: {v:?}") };
        let args = t.value.as_sequence();
        match tag_name(t).as_str() {
            "Equals" => {
                let args = args.expect("Equals takes two values");
                let a = self.resolve(&args[0]).and_then(|v| scalar(&v));
                let b = self.resolve(&args[1]).and_then(|v| scalar(&v));
                a == b
            }
            "Not" => !self.truth(&args.expect("Not takes a list")[0]),
            "And" => args.expect("And takes a list").iter().all(|c| self.truth(c)),
            "Or" => args.expect("Or takes a list").iter().any(|c| self.truth(c)),
            "Condition" => self.condition(t.value.as_str().expect("a condition name")),
            other => panic!("unsupported condition function {other}"),
        }
    }

    fn reference(&self, name: &str) -> Option<String> {
        if name == "AWS::NoValue" {
            return None;
        }
        let (resource, attribute) = name.split_once('.').unwrap_or((name, ""));
        if attribute.is_empty() {
            if let Some(p) = self.parameters.get(name) {
                return Some(p.clone());
            }
            if let Some(r) = self.refs.get(name) {
                return Some(r.clone());
            }
        } else if let Some(a) = self.attributes.get(name) {
            return Some(a.clone());
        } else if !self.template["Resources"][resource].is_null() {
            // An attribute no call is checked against (a log group's ARN, a domain name).
            return Some(format!("arn:aws:unmodelled:{REGION}:{ACCOUNT}:{resource}/{attribute}"));
        }
        panic!("{name} is not known in this deployment")
    }

    fn substitute(&self, text: &str, extra: &BTreeMap<String, String>) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').expect("an unclosed ${ in !Sub");
            let name = &after[..end];
            let value = extra.get(name).cloned().or_else(|| self.reference(name));
            out.push_str(&value.unwrap_or_default());
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// `v` with every intrinsic function resolved; `None` where it is `AWS::NoValue`.
    pub fn resolve(&self, v: &Value) -> Option<Value> {
        match v {
            Value::Tagged(t) => match tag_name(t).as_str() {
                "Ref" => {
                    let name = t.value.as_str().expect("Ref takes a name");
                    let list = self.template["Parameters"][name]["Type"].as_str()
                        == Some("CommaDelimitedList");
                    let value = self.reference(name)?;
                    if list {
                        // A list parameter is a list: empty items (the default "") drop out.
                        let items = value.split(',').map(str::trim).filter(|i| !i.is_empty());
                        return Some(Value::Sequence(
                            items.map(|i| Value::String(i.to_owned())).collect(),
                        ));
                    }
                    Some(Value::String(value))
                }
                "Join" => {
                    let args = t.value.as_sequence().expect("Join takes a separator and a list");
                    let separator = args[0].as_str().expect("a separator");
                    let items = self.resolve(&args[1])?;
                    let items = items.as_sequence().expect("Join takes a list");
                    let parts: Vec<String> = items.iter().filter_map(scalar).collect();
                    Some(Value::String(parts.join(separator)))
                }
                "GetAtt" => {
                    let name = match &t.value {
                        Value::String(s) => s.clone(),
                        Value::Sequence(parts) => {
                            parts.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(".")
                        }
                        other => panic!("GetAtt of {other:?}"),
                    };
                    self.reference(&name).map(Value::String)
                }
                "Sub" => {
                    let (text, extra) = match &t.value {
                        Value::String(s) => (s.clone(), BTreeMap::new()),
                        Value::Sequence(parts) => {
                            let text = parts[0].as_str().expect("Sub text").to_owned();
                            let extra = parts[1]
                                .as_mapping()
                                .expect("Sub variables")
                                .iter()
                                .filter_map(|(k, v)| {
                                    let value = self.resolve(v).and_then(|v| scalar(&v))?;
                                    Some((k.as_str()?.to_owned(), value))
                                })
                                .collect();
                            (text, extra)
                        }
                        other => panic!("Sub of {other:?}"),
                    };
                    Some(Value::String(self.substitute(&text, &extra)))
                }
                "If" => {
                    let args = t.value.as_sequence().expect("If takes three values");
                    let chosen = if self.condition(args[0].as_str().expect("a condition name")) {
                        &args[1]
                    } else {
                        &args[2]
                    };
                    self.resolve(chosen)
                }
                "Equals" | "Not" | "And" | "Or" | "Condition" => Some(Value::Bool(self.truth(v))),
                other => panic!("unsupported intrinsic function {other}"),
            },
            Value::Mapping(m) => Some(Value::Mapping(
                m.iter().filter_map(|(k, v)| Some((k.clone(), self.resolve(v)?))).collect(),
            )),
            Value::Sequence(items) => {
                Some(Value::Sequence(items.iter().filter_map(|i| self.resolve(i)).collect()))
            }
            other => Some(other.clone()),
        }
    }

    /// The resolved resource `id`, or `None` when its condition leaves it out.
    pub fn resource(&self, id: &str) -> Option<Value> {
        let resource = &self.template["Resources"][id];
        if resource.is_null() {
            panic!("the template has no resource {id}");
        }
        if let Some(condition) = resource["Condition"].as_str()
            && !self.condition(condition)
        {
            return None;
        }
        self.resolve(resource)
    }

    /// The environment and role the template gives function `id`.
    pub fn function(&self, id: &str) -> FunctionSetUp {
        let function = self.resource(id).unwrap_or_else(|| panic!("{id} is not deployed"));
        // SAM gives every function the globals' variables, then its own.
        let globals =
            self.resolve(&self.template["Globals"]["Function"]["Environment"]["Variables"]);
        let environment =
            [globals.as_ref(), Some(&function["Properties"]["Environment"]["Variables"])]
                .into_iter()
                .flatten()
                .filter_map(Value::as_mapping)
                .flat_map(|vars| {
                    vars.iter().filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar(v)?)))
                })
                .collect();
        let role_arn = function["Properties"]["Role"].as_str().expect("a role ARN").to_owned();
        let role = self
            .attributes
            .iter()
            .find(|(name, arn)| **arn == role_arn && name.ends_with(".Arn"))
            .map(|(name, _)| name.trim_end_matches(".Arn").to_owned())
            .expect("the function's role is a role of the template");
        FunctionSetUp { environment, role, role_arn }
    }

    /// Every statement the role `role` (logical id) is given: its inline policies and any
    /// `AWS::IAM::RolePolicy`/`Policy` attached to it.
    pub fn role_statements(&self, role: &str) -> Vec<Statement> {
        let mut documents = Vec::new();
        if let Some(r) = self.resource(role) {
            for policy in r["Properties"]["Policies"].as_sequence().into_iter().flatten() {
                documents.push(policy["PolicyDocument"].clone());
            }
        }
        let role_name = self.refs.get(role).cloned().unwrap_or_default();
        for (id, resource) in self.template["Resources"].as_mapping().into_iter().flatten() {
            let kind = resource["Type"].as_str().unwrap_or_default();
            if !matches!(kind, "AWS::IAM::RolePolicy" | "AWS::IAM::Policy") {
                continue;
            }
            let Some(resolved) = self.resource(id.as_str().unwrap_or_default()) else { continue };
            let p = &resolved["Properties"];
            let attached = p["RoleName"].as_str() == Some(&role_name)
                || p["Roles"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|r| r.as_str() == Some(&role_name));
            if attached {
                documents.push(p["PolicyDocument"].clone());
            }
        }
        documents.iter().flat_map(statements_of).collect()
    }

    /// The statements of the managed policy `id` (logical id); none when it is not deployed.
    pub fn policy_statements(&self, id: &str) -> Vec<Statement> {
        self.resource(id)
            .map(|p| statements_of(&p["Properties"]["PolicyDocument"]))
            .unwrap_or_default()
    }

    /// The value of output `name`, resolved; `None` when its condition leaves it out.
    pub fn output(&self, name: &str) -> Option<String> {
        let output = &self.template["Outputs"][name];
        if output.is_null() {
            panic!("the template has no output {name}");
        }
        if let Some(condition) = output["Condition"].as_str()
            && !self.condition(condition)
        {
            return None;
        }
        self.resolve(&output["Value"]).and_then(|v| scalar(&v))
    }

    /// The key policies of the template's KMS keys, by key ARN.
    pub fn key_policies(&self) -> BTreeMap<String, Vec<Statement>> {
        let mut out = BTreeMap::new();
        for (id, resource) in self.template["Resources"].as_mapping().into_iter().flatten() {
            if resource["Type"].as_str() != Some("AWS::KMS::Key") {
                continue;
            }
            let id = id.as_str().unwrap_or_default();
            let Some(key) = self.resource(id) else { continue };
            let arn = self.reference(&format!("{id}.Arn")).unwrap_or_default();
            out.insert(arn, statements_of(&key["Properties"]["KeyPolicy"]));
        }
        out
    }
}

/// The ARN a role of stack `stack` gets in a test deployment.
pub fn role_arn(stack: &str, logical_id: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{stack}-{logical_id}")
}

/// The account principal that delegates a key's use to IAM.
pub fn account_root() -> String {
    format!("arn:aws:iam::{ACCOUNT}:root")
}

/// One condition: operator, context key, values.
#[derive(Debug, Clone)]
pub struct Condition {
    pub operator: String,
    pub key: String,
    pub values: Vec<String>,
}

/// One policy statement.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sid: String,
    pub allow: bool,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
    /// Principals (key policies only): ARNs, or `*`.
    pub principals: Vec<String>,
    pub conditions: Vec<Condition>,
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

fn statements_of(document: &Value) -> Vec<Statement> {
    document["Statement"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|s| {
            assert!(s["NotAction"].is_null() && s["NotResource"].is_null(), "{s:?}");
            let principals = match &s["Principal"] {
                Value::Null => Vec::new(),
                Value::String(star) => vec![star.clone()],
                p => strings(&p["AWS"]),
            };
            let mut conditions = Vec::new();
            for (operator, keys) in s["Condition"].as_mapping().into_iter().flatten() {
                for (key, values) in keys.as_mapping().into_iter().flatten() {
                    conditions.push(Condition {
                        operator: operator.as_str().unwrap_or_default().to_owned(),
                        key: key.as_str().unwrap_or_default().to_owned(),
                        values: strings(values),
                    });
                }
            }
            Statement {
                sid: s["Sid"].as_str().unwrap_or("(no Sid)").to_owned(),
                allow: s["Effect"].as_str() == Some("Allow"),
                actions: strings(&s["Action"]),
                resources: strings(&s["Resource"]),
                principals,
                conditions,
            }
        })
        .collect()
}

/// IAM's wildcard match (`*` any run, `?` one character); actions compare case-insensitively.
pub fn wildcard(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let fold = |s: &str| if ignore_case { s.to_ascii_lowercase() } else { s.to_owned() };
    let (p, t): (Vec<char>, Vec<char>) =
        (fold(pattern).chars().collect(), fold(text).chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The request context keys of `call` that conditions can test (KMS encryption context and
/// DynamoDB's leading keys; calls made directly by a function, so `kms:ViaService` is
/// absent).
fn context_values(call: &AwsCall, key: &str) -> Option<Vec<String>> {
    let dynamodb = call.action.starts_with("dynamodb:");
    if call.action.starts_with("sts:") {
        let value = call.context.get(key);
        return match key {
            crate::recorder::STS_AUDIENCE => {
                value.map(|v| v.split('\n').map(str::to_owned).collect())
            }
            crate::recorder::STS_SIGNING_ALGORITHM | crate::recorder::STS_DURATION => {
                value.map(|v| vec![v.clone()])
            }
            other => panic!("condition key {other} is not modelled for STS: extend the evaluator"),
        };
    }
    if key == crate::recorder::LEADING_KEYS {
        return call.context.get(key).filter(|_| dynamodb).map(|v| vec![v.clone()]);
    }
    if dynamodb {
        return None;
    }
    if key == "kms:EncryptionContextKeys" {
        return (!call.context.is_empty()).then(|| call.context.keys().cloned().collect());
    }
    if let Some(name) = key.strip_prefix("kms:EncryptionContext:") {
        return call.context.get(name).map(|v| vec![v.clone()]);
    }
    match key {
        "kms:ViaService" | "kms:CallerAccount" | "aws:SourceArn" => None,
        other => panic!("condition key {other} is not modelled: extend the evaluator"),
    }
}

fn condition_holds(c: &Condition, call: &AwsCall) -> bool {
    let present = context_values(call, &c.key);
    match c.operator.as_str() {
        "StringEquals" => present.is_some_and(|vals| vals.iter().any(|v| c.values.contains(v))),
        "StringLike" => present.is_some_and(|vals| {
            vals.iter().any(|v| c.values.iter().any(|p| wildcard(p, v, false)))
        }),
        "Null" => {
            let want_absent = c.values.iter().any(|v| v == "true");
            present.is_none() == want_absent
        }
        // AWS: true for an absent or empty key (every one of no values matches).
        "ForAllValues:StringEquals" => {
            present.unwrap_or_default().iter().all(|v| c.values.contains(v))
        }
        "ForAllValues:StringLike" => present
            .unwrap_or_default()
            .iter()
            .all(|v| c.values.iter().any(|p| wildcard(p, v, false))),
        "ForAnyValue:StringEquals" => {
            present.unwrap_or_default().iter().any(|v| c.values.contains(v))
        }
        "NumericLessThanEquals" => present.is_some_and(|vals| {
            let limit: Option<f64> = c.values.first().and_then(|v| v.parse().ok());
            vals.iter().all(|v| v.parse::<f64>().ok().zip(limit).is_some_and(|(v, l)| v <= l))
        }),
        other => panic!("condition operator {other} is not modelled: extend the evaluator"),
    }
}

impl Statement {
    /// Whether this statement applies to `call` (action, resource, conditions).
    pub fn matches(&self, call: &AwsCall) -> bool {
        self.matches_action(&call.action, call)
    }

    /// The same with the statement's action list narrowed to `action`.
    pub fn matches_action(&self, action: &str, call: &AwsCall) -> bool {
        self.actions.iter().any(|a| wildcard(a, action, true))
            && wildcard_any(&self.resources, &call.resource)
            && self.conditions.iter().all(|c| condition_holds(c, call))
    }

    /// Whether the statement's principal names `principal`.
    pub fn names(&self, principal: &str) -> bool {
        self.principals.iter().any(|p| p == "*" || p == principal)
    }
}

fn wildcard_any(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|p| wildcard(p, text, false))
}

/// Why a call was allowed (the statements that allowed it), or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The statements (`where:Sid`) that allowed it.
    Allowed(Vec<String>),
    Denied(String),
}

/// Whether the role `role_arn`, with `iam` statements, may make `call`, given the key
/// policies of the template's keys.
pub fn authorize(
    role_arn: &str,
    iam: &[Statement],
    key_policies: &BTreeMap<String, Vec<Statement>>,
    call: &AwsCall,
) -> Decision {
    let iam_allows: Vec<String> = iam
        .iter()
        .filter(|s| s.allow && s.matches(call))
        .map(|s| format!("role:{}", s.sid))
        .collect();
    if let Some(deny) = iam.iter().find(|s| !s.allow && s.matches(call)) {
        return Decision::Denied(format!("denied by the role's {}", deny.sid));
    }
    if !call.action.starts_with("kms:") {
        return if iam_allows.is_empty() {
            Decision::Denied("no statement of the role allows it".into())
        } else {
            Decision::Allowed(iam_allows)
        };
    }
    let Some(policy) = key_policies.get(&call.resource) else {
        return Decision::Denied(format!("{} is not a key of this stack", call.resource));
    };
    let applies = |principal: &str| -> Vec<&Statement> {
        policy.iter().filter(|s| s.names(principal) && s.matches(call)).collect()
    };
    let root = account_root();
    if let Some(deny) = applies(role_arn).into_iter().chain(applies(&root)).find(|s| !s.allow) {
        return Decision::Denied(format!("denied by the key policy's {}", deny.sid));
    }
    let direct: Vec<String> = applies(role_arn)
        .into_iter()
        .filter(|s| s.allow)
        .map(|s| format!("key:{}", s.sid))
        .collect();
    if !direct.is_empty() {
        return Decision::Allowed(direct);
    }
    let delegated: Vec<String> =
        applies(&root).into_iter().filter(|s| s.allow).map(|s| format!("key:{}", s.sid)).collect();
    if !delegated.is_empty() && !iam_allows.is_empty() {
        return Decision::Allowed(delegated.into_iter().chain(iam_allows).collect());
    }
    Decision::Denied(if delegated.is_empty() {
        "the key policy allows it to neither the role nor (by delegation) the account".into()
    } else {
        "the key policy delegates to IAM, but no statement of the role allows it".into()
    })
}

/// Every grant (statement, action) of `statements` that allowed none of `calls`. A grant
/// is used when it is among the statements that allowed a call of that action (an IAM
/// statement on a key whose policy does not delegate to IAM allows nothing, so it is unused).
/// `marker` tells the statements apart in a [`Decision`]: `"role"` or `"key"`; with `"key"`,
/// only statements naming `principal`. Statements limited to `kms:ViaService` (used by AWS
/// services on the function's behalf) and `logs:` actions (used by Lambda) are left out.
pub fn unused_grants(
    who: &str,
    statements: &[Statement],
    decided: &[(AwsCall, Decision)],
    marker: &str,
    principal: &str,
) -> BTreeSet<String> {
    let mut unused = BTreeSet::new();
    for s in statements.iter().filter(|s| s.allow) {
        if marker == "key" && !s.names(principal) {
            continue;
        }
        if s.conditions.iter().any(|c| c.key == "kms:ViaService") {
            continue;
        }
        let name = format!("{marker}:{}", s.sid);
        for action in s.actions.iter().filter(|a| !a.starts_with("logs:")) {
            let used = decided.iter().any(|(call, decision)| {
                wildcard(action, &call.action, true)
                    && matches!(decision, Decision::Allowed(by) if by.contains(&name))
            });
            if !used {
                unused.insert(format!("{who} {name}: {action}"));
            }
        }
    }
    unused
}

/// Statement ids must tell statements apart within one role or one key policy.
pub fn assert_unique_sids(who: &str, statements: &[Statement]) {
    let mut seen = BTreeSet::new();
    for s in statements {
        assert!(seen.insert(&s.sid), "{who}: two statements named {}", s.sid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_iam_does() {
        assert!(wildcard("kms:Describe*", "kms:DescribeKey", true));
        assert!(wildcard("KMS:decrypt", "kms:Decrypt", true));
        assert!(!wildcard("kms:Decrypt", "kms:DecryptX", true));
        assert!(wildcard(
            "arn:aws:dynamodb:*:table/t",
            "arn:aws:dynamodb:us-east-1:1:table/t",
            false
        ));
        assert!(!wildcard(
            "arn:aws:dynamodb:*:table/t",
            "arn:aws:dynamodb:us-east-1:1:table/t/index/i",
            false
        ));
        assert!(wildcard("a?c", "abc", false));
    }

    fn kms_statement(principal: &str) -> Statement {
        Statement {
            sid: "S".into(),
            allow: true,
            actions: vec!["kms:Decrypt".into()],
            resources: vec!["*".into()],
            principals: vec![principal.into()],
            conditions: vec![
                Condition {
                    operator: "StringEquals".into(),
                    key: "kms:EncryptionContext:store".into(),
                    values: vec!["s".into()],
                },
                Condition {
                    operator: "ForAllValues:StringEquals".into(),
                    key: "kms:EncryptionContextKeys".into(),
                    values: vec!["store".into(), "connection_id".into()],
                },
                Condition {
                    operator: "Null".into(),
                    key: "kms:EncryptionContext:connection_id".into(),
                    values: vec!["false".into()],
                },
            ],
        }
    }

    #[test]
    fn key_policies_decide_kms_calls_and_conditions_bind_the_context() {
        let role = "arn:aws:iam::123456789012:role/r";
        let keys = BTreeMap::from([("k".to_owned(), vec![kms_statement(role)])]);
        let call = |ctx: &[(&str, &str)]| AwsCall::new("kms:Decrypt", "k", ctx);
        assert!(matches!(
            authorize(role, &[], &keys, &call(&[("store", "s"), ("connection_id", "c")])),
            Decision::Allowed(_)
        ));
        // connection_id missing, an extra key, another store, another role, another key.
        assert!(matches!(
            authorize(role, &[], &keys, &call(&[("store", "s")])),
            Decision::Denied(_)
        ));
        assert!(matches!(
            authorize(
                role,
                &[],
                &keys,
                &call(&[("store", "s"), ("connection_id", "c"), ("x", "y")])
            ),
            Decision::Denied(_)
        ));
        assert!(matches!(
            authorize(role, &[], &keys, &call(&[("store", "t"), ("connection_id", "c")])),
            Decision::Denied(_)
        ));
        assert!(matches!(
            authorize(
                "arn:aws:iam::123456789012:role/other",
                &[],
                &keys,
                &call(&[("store", "s"), ("connection_id", "c")])
            ),
            Decision::Denied(_)
        ));
        let elsewhere =
            AwsCall::new("kms:Decrypt", "k2", &[("store", "s"), ("connection_id", "c")]);
        assert!(matches!(authorize(role, &[], &keys, &elsewhere), Decision::Denied(_)));
    }

    #[test]
    fn leading_keys_limit_a_dynamodb_grant_to_the_items_it_names() {
        use crate::recorder::LEADING_KEYS;
        let role = "arn:aws:iam::123456789012:role/r";
        let grant = Statement {
            sid: "ReadApps".into(),
            allow: true,
            principals: vec![],
            actions: vec!["dynamodb:GetItem".into()],
            resources: vec!["table".into()],
            conditions: vec![
                Condition {
                    operator: "ForAllValues:StringLike".into(),
                    key: LEADING_KEYS.into(),
                    values: vec!["app#*".into()],
                },
                Condition {
                    operator: "Null".into(),
                    key: LEADING_KEYS.into(),
                    values: vec!["false".into()],
                },
            ],
        };
        let get = |pk: &str| AwsCall::new("dynamodb:GetItem", "table", &[(LEADING_KEYS, pk)]);
        let keys = BTreeMap::new();
        let iam = std::slice::from_ref(&grant);
        assert!(matches!(authorize(role, iam, &keys, &get("app#con_1")), Decision::Allowed(_)));
        assert!(matches!(authorize(role, iam, &keys, &get("conn#con_1")), Decision::Denied(_)));
        let unkeyed = AwsCall::new("dynamodb:GetItem", "table", &[]);
        assert!(matches!(authorize(role, iam, &keys, &unkeyed), Decision::Denied(_)));
    }

    #[test]
    fn an_iam_grant_counts_for_a_key_only_when_the_key_policy_delegates() {
        let role = "arn:aws:iam::123456789012:role/r";
        let mut iam = kms_statement("");
        iam.principals.clear();
        iam.resources = vec!["k".into()];
        let call = AwsCall::new("kms:Decrypt", "k", &[("store", "s"), ("connection_id", "c")]);
        let admin_only = Statement {
            actions: vec!["kms:Describe*".into()],
            conditions: vec![],
            ..kms_statement(&account_root())
        };
        let keys = BTreeMap::from([("k".to_owned(), vec![admin_only.clone()])]);
        assert!(matches!(
            authorize(role, std::slice::from_ref(&iam), &keys, &call),
            Decision::Denied(_)
        ));
        let delegating = Statement { actions: vec!["kms:*".into()], ..admin_only };
        let keys = BTreeMap::from([("k".to_owned(), vec![delegating])]);
        assert!(matches!(authorize(role, &[iam], &keys, &call), Decision::Allowed(_)));
    }
}
