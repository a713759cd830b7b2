/**
 * What the suite's auth plugins (redis-key-auth, redis-jwt) do once they know who a
 * request is from, as Kong's own auth plugins do it: kong.client.authenticate, the
 * consumer and credential headers sent upstream, the anonymous consumer, and the request
 * facts. One copy for both plugins, written for their warm path: no table, closure or
 * string is made per request, and no call is a tail call (LuaJIT cannot record a return
 * from a tail-called function into the gateway's xpcall frame, and stops compiling it).
 */
import * as facts from "./facts";

const HEADER_CONSUMER_ID = "X-Consumer-ID";
const HEADER_CONSUMER_CUSTOM_ID = "X-Consumer-Custom-ID";
const HEADER_CONSUMER_USERNAME = "X-Consumer-Username";
const HEADER_CREDENTIAL_IDENTIFIER = "X-Credential-Identifier";
const HEADER_ANONYMOUS = "X-Anonymous-Consumer";

export const ERR_UNEXPECTED = "An unexpected error occurred";

/** The headers setConsumer clears, as kong.request.get_headers names them (lower case). */
const SENT_CUSTOM_ID = "x-consumer-custom-id";
const SENT_USERNAME = "x-consumer-username";
const SENT_CREDENTIAL_IDENTIFIER = "x-credential-identifier";
const SENT_ANONYMOUS = "x-anonymous-consumer";
const SENT_CONSUMER_ID = "x-consumer-id";

/**
 * Removes a header from the upstream request unless `sent` (every request header, complete:
 * never a truncated table) shows it absent. Each removal is a C call that walks the
 * request's headers; most requests carry none of these.
 */
function clearSent(this: void, sent: HeaderTable | undefined, name: string, sentName: string): void {
  if (sent === undefined || rawget(sent as unknown as Record<string, unknown>, sentName) !== undefined) kong.service.request.clear_header(name);
}

/**
 * Kong's set_consumer: authenticates the request as `consumer` and tells the upstream who
 * it is. With a credential, `identifier` is its X-Credential-Identifier (key-auth sends
 * the credential's id, jwt its key) and X-Anonymous-Consumer is removed; without one (the
 * anonymous consumer) X-Credential-Identifier is removed and X-Anonymous-Consumer is
 * `true`. A header the consumer has no value for is removed, never left as the client
 * sent it. `sent`, when given, is the request's complete headers (kong.request.get_headers, not
 * truncated, read in this phase): a header absent from it has nothing to remove.
 */
export function setConsumer(this: void, consumer: KongConsumer, credential: KongCredential | undefined, identifier: string | undefined, sent?: HeaderTable): void {
  kong.client.authenticate(consumer, credential);
  const request = kong.service.request;
  if (consumer.id !== undefined) request.set_header(HEADER_CONSUMER_ID, consumer.id);
  else clearSent(sent, HEADER_CONSUMER_ID, SENT_CONSUMER_ID);
  if (consumer.custom_id !== undefined) request.set_header(HEADER_CONSUMER_CUSTOM_ID, consumer.custom_id);
  else clearSent(sent, HEADER_CONSUMER_CUSTOM_ID, SENT_CUSTOM_ID);
  if (consumer.username !== undefined) request.set_header(HEADER_CONSUMER_USERNAME, consumer.username);
  else clearSent(sent, HEADER_CONSUMER_USERNAME, SENT_USERNAME);
  if (credential !== undefined) {
    if (identifier !== undefined) request.set_header(HEADER_CREDENTIAL_IDENTIFIER, identifier);
    else clearSent(sent, HEADER_CREDENTIAL_IDENTIFIER, SENT_CREDENTIAL_IDENTIFIER);
    clearSent(sent, HEADER_ANONYMOUS, SENT_ANONYMOUS);
  } else {
    clearSent(sent, HEADER_CREDENTIAL_IDENTIFIER, SENT_CREDENTIAL_IDENTIFIER);
    request.set_header(HEADER_ANONYMOUS, true);
  }
}

/** A credential identified the consumer: the request facts say so, then setConsumer (`sent` as there). */
export function authenticated(this: void, plugin: string, consumer: KongConsumer, credential: KongCredential, identifier: string, sent?: HeaderTable): void {
  facts.auth(plugin, "ok", consumer.id);
  setConsumer(consumer, credential, identifier, sent);
}

/** A request let through without authentication (fault_tolerant) must not carry identity headers of its own. */
export function clearConsumerHeaders(this: void): void {
  const request = kong.service.request;
  request.clear_header(HEADER_CONSUMER_ID);
  request.clear_header(HEADER_CONSUMER_CUSTOM_ID);
  request.clear_header(HEADER_CONSUMER_USERNAME);
  request.clear_header(HEADER_CREDENTIAL_IDENTIFIER);
  request.clear_header(HEADER_ANONYMOUS);
}

/**
 * A plugin instance's anonymous consumer as last looked up: Kong caches it in kong.cache;
 * here each prepared config keeps it until `until` (ngx.now() seconds) or until the
 * plugin's config version moves on, whichever comes first.
 */
export interface AnonymousSlot {
  consumer?: KongConsumer;
  until: number;
  version: number;
}

export function newAnonymousSlot(this: void): AnonymousSlot {
  return { until: 0, version: -1 };
}

/**
 * Authenticates the request as the configured anonymous consumer (by id or username, as
 * Kong's load_consumer(anonymous, true)), looked up at most once per `ttl` seconds and
 * config `version`. A consumer the config does not have is Kong's 500 (and false).
 */
export function setAnonymous(this: void, slot: AnonymousSlot, anonymous: string, ttl: number, version: number): boolean {
  const now = ngx.now();
  let consumer = slot.consumer;
  if (consumer === undefined || now >= slot.until || slot.version !== version) {
    const [found, err] = kong.client.load_consumer(anonymous, true);
    if (err !== undefined) error(err);
    if (found === undefined) {
      kong.log.err(`anonymous consumer '${anonymous}' is configured but not found`);
      kong.response.exit(500, { message: ERR_UNEXPECTED });
      return false;
    }
    consumer = found;
    slot.consumer = found;
    slot.until = now + ttl;
    slot.version = version;
  }
  setConsumer(consumer, undefined, undefined);
  return true;
}
