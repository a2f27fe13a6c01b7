import EnrichCore
import EnrichQueue
import NymbleAPI

/// The enrichment call as the pipeline sees it: one pair, the shared token, the pair's commerce context or
/// a typed error. ``NymbleClient`` is the real one; unit tests script the answers.
public protocol EnrichmentAPI: Sendable {
    func enrich(_ pair: Pair, token: AccessToken) async throws(NymbleAPIError) -> CommerceContext
}

extension NymbleClient: EnrichmentAPI {
    public func enrich(_ pair: Pair, token: AccessToken) async throws(NymbleAPIError) -> CommerceContext {
        try await access(organizationId: pair.organizationId, userId: pair.userId, token: token)
    }
}
