//! Properties of the agent server, over what its API shows.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    violation, Ident, PropertyResult, CREATED_AGENT_RETRIEVABLE, NO_DUPLICATE_AGENTS, SEARCH_ISOLATION,
};

/// One stored agent and the request key of the create that made it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObservedAgent<I, K> {
    pub id: I,
    pub create_key: K,
}

/// NoDuplicateAgents: agent ids are unique, and creates that share a
/// request key (retries, concurrent duplicates) produced one agent.
pub fn no_duplicate_agents<I: Ident, K: Ident>(agents: &[ObservedAgent<I, K>]) -> PropertyResult {
    let mut by_key: BTreeMap<&K, &I> = BTreeMap::new();
    let mut ids: BTreeSet<&I> = BTreeSet::new();
    for agent in agents {
        if !ids.insert(&agent.id) {
            return violation(NO_DUPLICATE_AGENTS, format!("agent id {:?} stored twice", agent.id));
        }
        if let Some(first) = by_key.insert(&agent.create_key, &agent.id) {
            return violation(
                NO_DUPLICATE_AGENTS,
                format!("create {:?} made agents {first:?} and {:?}", agent.create_key, agent.id),
            );
        }
    }
    Ok(())
}

/// CreatedAgentRetrievable: every create the server acknowledged can be read back.
pub fn created_agent_retrievable<I: Ident>(
    acknowledged: &BTreeSet<I>,
    retrievable: &BTreeSet<I>,
) -> PropertyResult {
    match acknowledged.difference(retrievable).next() {
        Some(missing) => violation(
            CREATED_AGENT_RETRIEVABLE,
            format!("agent {missing:?} was acknowledged but is not found"),
        ),
        None => Ok(()),
    }
}

/// One search an agent ran: who asked, and whose data each hit belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObservedSearch<I> {
    pub agent: I,
    pub hit_owners: Vec<I>,
}

/// SearchIsolation: every hit of an agent's search belongs to that agent.
pub fn search_isolation<I: Ident>(searches: &[ObservedSearch<I>]) -> PropertyResult {
    for search in searches {
        if let Some(foreign) = search.hit_owners.iter().find(|owner| **owner != search.agent) {
            return violation(
                SEARCH_ISOLATION,
                format!("search by {:?} returned data of {foreign:?}", search.agent),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_creates_with_one_key_must_make_one_agent() {
        let agent = |id: u8, key: &'static str| ObservedAgent { id, create_key: key };
        assert_eq!(no_duplicate_agents(&[agent(1, "a"), agent(2, "b")]), Ok(()));
        let err = no_duplicate_agents(&[agent(1, "a"), agent(2, "a")]).unwrap_err();
        assert!(err.detail.contains("made agents 1 and 2"), "{err}");
        assert!(no_duplicate_agents(&[agent(1, "a"), agent(1, "b")]).is_err());
    }

    #[test]
    fn acknowledged_agents_must_be_found() {
        let acked = BTreeSet::from([1u8, 2]);
        assert_eq!(created_agent_retrievable(&acked, &BTreeSet::from([1, 2, 3])), Ok(()));
        let err = created_agent_retrievable(&acked, &BTreeSet::from([1])).unwrap_err();
        assert_eq!(err.detail, "agent 2 was acknowledged but is not found");
    }

    #[test]
    fn search_hits_must_belong_to_the_searcher() {
        let own = ObservedSearch { agent: 1u8, hit_owners: vec![1, 1] };
        assert_eq!(search_isolation(&[own, ObservedSearch { agent: 2, hit_owners: vec![] }]), Ok(()));
        let leak = ObservedSearch { agent: 1u8, hit_owners: vec![1, 2] };
        assert_eq!(search_isolation(&[leak]).unwrap_err().property, SEARCH_ISOLATION);
    }
}
