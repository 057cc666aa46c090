//! Letta's tool rules (`tool_rules` of an agent) and their solver: which
//! tools a step may call given what the turn has called so far, whether a
//! call ends the turn, and whether the turn may end. Pure: the agent loop
//! feeds it each step's calls and asks it before the next.
//!
//! | rule (`type`) | effect |
//! |---|---|
//! | `run_first` | the first step of a turn may call only these tools |
//! | `exit_loop` | calling it ends the turn |
//! | `continue_loop` | calling it never ends the turn (even with `send_message`) |
//! | `constrain_child_tools` | after it, only its `children` |
//! | `conditional` | after it, the child its output maps to (`child_output_mapping`), else `default_child`; with `require_output_mapping`, an unmapped output ends the turn |
//! | `parent_last_tool` | its `children` only right after it |
//! | `max_count_per_step` | at most `max_count_limit` calls of it in one turn |
//! | `required_before_exit` | the turn does not end until it has been called |
//! | `requires_approval` | a call of it waits for the client's approval (the loop stops; see `service::turn`) |
//!
//! A step offers the model only the allowed tools' schemas; a call of
//! another tool is refused with the reason (an error the model sees), never
//! run.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Most rules an agent holds.
pub const TOOL_RULES_COUNT_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolRule {
    RunFirst {
        tool_name: String,
    },
    ExitLoop {
        tool_name: String,
    },
    ContinueLoop {
        tool_name: String,
    },
    ConstrainChildTools {
        tool_name: String,
        children: Vec<String>,
    },
    Conditional {
        tool_name: String,
        #[serde(default)]
        default_child: Option<String>,
        child_output_mapping: BTreeMap<String, String>,
        #[serde(default)]
        require_output_mapping: bool,
    },
    ParentLastTool {
        tool_name: String,
        children: Vec<String>,
    },
    MaxCountPerStep {
        tool_name: String,
        max_count_limit: u32,
    },
    RequiredBeforeExit {
        tool_name: String,
    },
    /// A call of it waits for the client's approval.
    RequiresApproval {
        tool_name: String,
    },
}

impl ToolRule {
    pub fn tool_name(&self) -> &str {
        match self {
            ToolRule::RunFirst { tool_name }
            | ToolRule::ExitLoop { tool_name }
            | ToolRule::ContinueLoop { tool_name }
            | ToolRule::ConstrainChildTools { tool_name, .. }
            | ToolRule::Conditional { tool_name, .. }
            | ToolRule::ParentLastTool { tool_name, .. }
            | ToolRule::MaxCountPerStep { tool_name, .. }
            | ToolRule::RequiredBeforeExit { tool_name }
            | ToolRule::RequiresApproval { tool_name } => tool_name,
        }
    }

    /// The rule as Letta renders it (`prompt_template` null).
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        if let Some(object) = value.as_object_mut() {
            object.insert("prompt_template".into(), Value::Null);
        }
        value
    }
}

/// Reads `rules` as given to create or modify an agent: Letta's shapes,
/// unknown fields (`prompt_template`, `args`) ignored; an unknown `type`,
/// or a count of 0 is refused with the reason.
pub fn parse_rules(rules: &[Value]) -> Result<Vec<ToolRule>, String> {
    if rules.len() > TOOL_RULES_COUNT_MAX {
        return Err(format!(
            "tool_rules has {} rules; the limit is TOOL_RULES_COUNT_MAX = {TOOL_RULES_COUNT_MAX}",
            rules.len()
        ));
    }
    let mut parsed = Vec::with_capacity(rules.len());
    for rule in rules {
        let mut clean = rule.clone();
        if let Some(object) = clean.as_object_mut() {
            object.retain(|key, _| !matches!(key.as_str(), "prompt_template" | "args" | "child_arg_nodes"));
        }
        let rule: ToolRule = serde_json::from_value(clean).map_err(|e| format!("tool rule {rule}: {e}"))?;
        if rule.tool_name().is_empty() {
            return Err("a tool rule needs a tool_name".into());
        }
        if let ToolRule::MaxCountPerStep { max_count_limit: 0, tool_name } = &rule {
            return Err(format!("max_count_per_step for {tool_name} must allow at least one call"));
        }
        parsed.push(rule);
    }
    Ok(parsed)
}

/// Whether a call of `name` waits for the client's approval.
pub fn requires_approval(rules: &[ToolRule], name: &str) -> bool {
    rules.iter().any(|rule| matches!(rule, ToolRule::RequiresApproval { tool_name } if tool_name == name))
}

/// What a turn has called so far, against the agent's rules.
#[derive(Debug, Clone, Default)]
pub struct RuleSolver {
    rules: Vec<ToolRule>,
    /// Tool names called this turn, in order.
    called: Vec<String>,
    /// The last call's result text.
    last_output: Option<String>,
    /// `required_before_exit` tools the turn waits for: the next steps may
    /// call only these until they are called.
    exit_blocked: Vec<String>,
}

/// What the solver says after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterStep {
    /// The turn ends here.
    End,
    /// The turn goes on to another step.
    Continue,
}

impl RuleSolver {
    pub fn new(rules: Vec<ToolRule>) -> Self {
        RuleSolver { rules, called: Vec::new(), last_output: None, exit_blocked: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn count(&self, name: &str) -> u32 {
        self.called.iter().filter(|called| *called == name).count() as u32
    }

    /// Which of `attached` (tool names) the next step may call.
    pub fn allowed(&self, attached: &[String]) -> BTreeSet<String> {
        let mut allowed: BTreeSet<String> = attached.iter().cloned().collect();
        let last = self.called.last();
        let narrow = |allowed: &mut BTreeSet<String>, to: &[String]| allowed.retain(|name| to.contains(name));
        if !self.exit_blocked.is_empty() {
            narrow(&mut allowed, &self.exit_blocked);
            return allowed;
        }
        if last.is_none() {
            let first: Vec<String> = self
                .rules
                .iter()
                .filter_map(|rule| match rule {
                    ToolRule::RunFirst { tool_name } => Some(tool_name.clone()),
                    _ => None,
                })
                .collect();
            if !first.is_empty() {
                narrow(&mut allowed, &first);
            }
        }
        for rule in &self.rules {
            match rule {
                ToolRule::ConstrainChildTools { tool_name, children } if last == Some(tool_name) => {
                    narrow(&mut allowed, children);
                }
                ToolRule::Conditional { tool_name, default_child, child_output_mapping, .. }
                    if last == Some(tool_name) =>
                {
                    let output = self.last_output.as_deref().unwrap_or_default();
                    let child = child_output_mapping
                        .iter()
                        .find(|(key, _)| output.trim() == key.as_str())
                        .map(|(_, child)| child.clone())
                        .or_else(|| default_child.clone());
                    let to: Vec<String> = match child {
                        Some(child) => vec![child],
                        None => child_output_mapping.values().cloned().collect(),
                    };
                    narrow(&mut allowed, &to);
                }
                ToolRule::ParentLastTool { tool_name, children } if last != Some(tool_name) => {
                    allowed.retain(|name| !children.contains(name));
                }
                ToolRule::MaxCountPerStep { tool_name, max_count_limit }
                    if self.count(tool_name) >= *max_count_limit =>
                {
                    allowed.remove(tool_name);
                }
                _ => {}
            }
        }
        allowed
    }

    /// Why `name` may not be called now, if it may not.
    pub fn refusal(&self, name: &str, attached: &[String]) -> Option<String> {
        let allowed = self.allowed(attached);
        if allowed.contains(name) {
            return None;
        }
        let listed: Vec<&str> = allowed.iter().map(String::as_str).collect();
        Some(format!(
            "tool {name} may not be called now under the agent's tool rules; allowed now: [{}]",
            listed.join(", ")
        ))
    }

    /// Records a call of `name` that returned `output`.
    pub fn called(&mut self, name: &str, output: &str) {
        self.called.push(name.to_string());
        self.last_output = Some(output.to_string());
        self.exit_blocked.retain(|blocked| blocked != name);
    }

    /// Whether the turn ends after a step whose calls were `names` (already
    /// recorded), given that without rules it would end when `replied`.
    /// Continuing only because `required_before_exit` tools were not
    /// called narrows the next steps to them.
    pub fn after_step(&mut self, names: &[String], replied: bool) -> AfterStep {
        let has = |kind: fn(&ToolRule) -> bool, name: &str| {
            self.rules.iter().any(|rule| kind(rule) && rule.tool_name() == name)
        };
        if names.iter().any(|name| has(|r| matches!(r, ToolRule::ExitLoop { .. }), name)) {
            return AfterStep::End;
        }
        if let Some(last) = names.last() {
            let unmapped = self.rules.iter().any(|rule| match rule {
                ToolRule::Conditional {
                    tool_name,
                    child_output_mapping,
                    default_child,
                    require_output_mapping: true,
                } => {
                    tool_name == last
                        && default_child.is_none()
                        && !child_output_mapping
                            .keys()
                            .any(|key| self.last_output.as_deref().unwrap_or_default().trim() == key)
                }
                _ => false,
            });
            if unmapped {
                return AfterStep::End;
            }
        }
        let keep_going = names.iter().any(|name| {
            has(
                |r| {
                    matches!(
                        r,
                        ToolRule::ContinueLoop { .. }
                            | ToolRule::ConstrainChildTools { .. }
                            | ToolRule::Conditional { .. }
                    )
                },
                name,
            )
        });
        if keep_going || !replied {
            return AfterStep::Continue;
        }
        let missing = self.missing_before_exit();
        if missing.is_empty() {
            AfterStep::End
        } else {
            self.exit_blocked = missing;
            AfterStep::Continue
        }
    }

    /// `required_before_exit` tools not yet called this turn.
    pub fn missing_before_exit(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter_map(|rule| match rule {
                ToolRule::RequiredBeforeExit { tool_name } if self.count(tool_name) == 0 => {
                    Some(tool_name.clone())
                }
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn set(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn letta_shapes_are_read_and_unsupported_ones_refused() {
        let rules = parse_rules(&[
            json!({"type": "run_first", "tool_name": "a", "prompt_template": null, "args": {"x": 1}}),
            json!({"type": "exit_loop", "tool_name": "send_message"}),
            json!({"type": "constrain_child_tools", "tool_name": "a", "children": ["b"]}),
            json!({"type": "max_count_per_step", "tool_name": "b", "max_count_limit": 2}),
        ])
        .unwrap();
        assert_eq!(
            rules[2],
            ToolRule::ConstrainChildTools { tool_name: "a".into(), children: names(&["b"]) }
        );
        assert_eq!(
            rules[1].to_json(),
            json!({"type": "exit_loop", "tool_name": "send_message", "prompt_template": null})
        );
        let approval = parse_rules(&[json!({"type": "requires_approval", "tool_name": "a"})]).unwrap();
        assert!(requires_approval(&approval, "a") && !requires_approval(&approval, "b"));
        assert!(parse_rules(&[json!({"type": "teleport", "tool_name": "a"})]).is_err());
        assert!(parse_rules(&[
            json!({"type": "max_count_per_step", "tool_name": "a", "max_count_limit": 0})
        ])
        .is_err());
        let too_many = vec![json!({"type": "exit_loop", "tool_name": "a"}); TOOL_RULES_COUNT_MAX + 1];
        assert!(parse_rules(&too_many).unwrap_err().contains("TOOL_RULES_COUNT_MAX"));
    }

    #[test]
    fn first_children_counts_and_parents_narrow_the_allowed_tools() {
        let attached = names(&["a", "b", "c", "send_message"]);
        let mut solver = RuleSolver::new(vec![
            ToolRule::RunFirst { tool_name: "a".into() },
            ToolRule::ConstrainChildTools { tool_name: "a".into(), children: names(&["b"]) },
            ToolRule::MaxCountPerStep { tool_name: "b".into(), max_count_limit: 1 },
            ToolRule::ParentLastTool { tool_name: "b".into(), children: names(&["c"]) },
        ]);
        assert_eq!(solver.allowed(&attached), set(&["a"]));
        assert!(solver.refusal("send_message", &attached).unwrap().contains("allowed now: [a]"));
        solver.called("a", "ok");
        assert_eq!(solver.allowed(&attached), set(&["b"]));
        solver.called("b", "ok");
        assert_eq!(solver.allowed(&attached), set(&["a", "c", "send_message"]), "b used up; c right after b");
        solver.called("send_message", "");
        assert_eq!(solver.allowed(&attached), set(&["a", "send_message"]));
    }

    #[test]
    fn conditional_rules_follow_the_output() {
        let attached = names(&["check", "yes_tool", "no_tool", "send_message"]);
        let mapping: BTreeMap<String, String> =
            [("yes".to_string(), "yes_tool".to_string()), ("no".to_string(), "no_tool".to_string())].into();
        let rule = |default_child: Option<&str>, require| ToolRule::Conditional {
            tool_name: "check".into(),
            default_child: default_child.map(str::to_string),
            child_output_mapping: mapping.clone(),
            require_output_mapping: require,
        };
        let mut solver = RuleSolver::new(vec![rule(Some("send_message"), false)]);
        solver.called("check", " no\n");
        assert_eq!(solver.allowed(&attached), set(&["no_tool"]));
        assert_eq!(solver.after_step(&names(&["check"]), false), AfterStep::Continue);
        let mut solver = RuleSolver::new(vec![rule(Some("send_message"), false)]);
        solver.called("check", "maybe");
        assert_eq!(solver.allowed(&attached), set(&["send_message"]));
        let mut solver = RuleSolver::new(vec![rule(None, true)]);
        solver.called("check", "maybe");
        assert_eq!(
            solver.after_step(&names(&["check"]), false),
            AfterStep::End,
            "unmapped output ends the turn"
        );
    }

    #[test]
    fn exit_continue_and_required_rules_decide_when_a_turn_ends() {
        let mut solver = RuleSolver::new(vec![
            ToolRule::ExitLoop { tool_name: "finish".into() },
            ToolRule::ContinueLoop { tool_name: "send_message".into() },
            ToolRule::RequiredBeforeExit { tool_name: "save".into() },
        ]);
        solver.called("finish", "done");
        assert_eq!(solver.after_step(&names(&["finish"]), false), AfterStep::End);
        let mut solver = RuleSolver::new(vec![ToolRule::ContinueLoop { tool_name: "send_message".into() }]);
        solver.called("send_message", "");
        assert_eq!(solver.after_step(&names(&["send_message"]), true), AfterStep::Continue);
        let mut solver = RuleSolver::new(vec![ToolRule::RequiredBeforeExit { tool_name: "save".into() }]);
        solver.called("send_message", "");
        assert_eq!(solver.after_step(&names(&["send_message"]), true), AfterStep::Continue);
        assert_eq!(solver.missing_before_exit(), names(&["save"]));
        assert_eq!(
            solver.allowed(&names(&["save", "send_message"])),
            set(&["save"]),
            "only what blocks the exit"
        );
        solver.called("save", "ok");
        assert_eq!(solver.after_step(&names(&["save"]), true), AfterStep::End);
    }
}
