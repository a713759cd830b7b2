/**
 * Where the auth plugins of this request's route read credentials: header, query and
 * cookie names from their configs, so that a key sent under a name only that route knows
 * (key_names: ["x-tenant-key"]) is redacted too.
 *
 * Kong's PDK exposes no other plugin's config. The suite's auth plugins (redis-key-auth,
 * redis-jwt) say where they looked in the request facts, in Kong too. For Kong's bundled
 * auth plugins the local gateway's ngx.ctx.KRS_SELECTED (the plugins it selected for the
 * request) is read; on Kong that list is absent and only the configured names and
 * defaults apply to them (docs say so).
 */
import * as facts from "../../lib/facts";
import { nameSet } from "./redact";
import type { NameSet } from "./redact";

interface SelectedPlugin {
  plugin: { name: string };
  entity: { config: LuaTable<string, unknown> };
}

export interface CredentialNames {
  headers: string[];
  query: string[];
  /** A route reads a credential from a cookie: the whole Cookie header goes. */
  cookies: boolean;
}

function strings(this: void, value: unknown): string[] {
  const out: string[] = [];
  if (type(value) !== "table") return out;
  for (const v of value as unknown[]) if (type(v) === "string") out.push(v as string);
  return out;
}

/** What one auth plugin's config says it reads; undefined for plugins that read no credential. */
export function namesOf(this: void, plugin: string, config: LuaTable<string, unknown>): CredentialNames | undefined {
  if (plugin === "redis-key-auth" || plugin === "key-auth") {
    const names = strings(config.get("key_names"));
    return { headers: names, query: names, cookies: false };
  }
  if (plugin === "redis-jwt" || plugin === "jwt") {
    return { headers: strings(config.get("header_names")), query: strings(config.get("uri_param_names")), cookies: strings(config.get("cookie_names")).length > 0 };
  }
  if (plugin === "oauth2") return { headers: ["authorization"], query: ["access_token"], cookies: false };
  if (plugin === "basic-auth" || plugin === "hmac-auth" || plugin === "ldap-auth") return { headers: ["authorization", "proxy-authorization"], query: [], cookies: false };
  return undefined;
}

export interface RouteRedaction {
  headers: NameSet;
  query: NameSet;
}

/**
 * The configured names (`base`, built once per config) plus those of the auth plugins
 * selected for this request; `base` itself when they add nothing.
 */
export function forRequest(this: void, base: RouteRedaction, headers: string[], query: string[]): RouteRedaction {
  const selected = (ngx.ctx as { KRS_SELECTED?: SelectedPlugin[] }).KRS_SELECTED;
  // Allocated only when a route has an auth plugin: most requests add nothing.
  let extraHeaders: string[] | undefined;
  let extraQuery: string[] | undefined;
  if (type(selected) === "table") {
    for (const s of selected!) {
      const names = namesOf(s.plugin.name, s.entity.config);
      if (names === undefined) continue;
      extraHeaders = extraHeaders ?? [];
      extraQuery = extraQuery ?? [];
      for (const h of names.headers) extraHeaders.push(h);
      for (const q of names.query) extraQuery.push(q);
      if (names.cookies) extraHeaders.push("cookie");
    }
  }
  // The suite's auth plugins say where they looked, in Kong as on the local gateway.
  const said = facts.get()?.credential_names;
  if (said !== undefined) {
    for (const names of said) {
      extraHeaders = extraHeaders ?? [];
      extraQuery = extraQuery ?? [];
      for (const h of names.headers) extraHeaders.push(h);
      for (const q of names.query) extraQuery.push(q);
      if (names.cookies) extraHeaders.push("cookie");
    }
  }
  if (extraHeaders === undefined || extraQuery === undefined || (extraHeaders.length === 0 && extraQuery.length === 0)) return base;
  return { headers: nameSet(headers, extraHeaders), query: nameSet(query, extraQuery) };
}
