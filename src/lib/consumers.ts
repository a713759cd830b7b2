/**
 * Consumer lookups for the plugins' Admin API endpoints (api.ts), done as Kong's own
 * Admin API does them (kong/api/endpoints.lua): through kong.db.consumers. In Kong,
 * kong.client.load_consumer checks its phase (access to log only) and raises in an Admin
 * API endpoint, which is not a proxied request; request phases keep using it.
 *
 * Each returns the consumer, or nil when there is none, or nil and the database error.
 */

const UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$";

/** Kong's consumer ids are uuids. */
export function isUuid(this: void, value: string): boolean {
  return string.find(value, UUID)[0] !== undefined;
}

/** The consumer with this id (none when it is not a uuid: no consumer has such an id). */
export function byId(this: void, id: string): LuaMultiReturn<[KongConsumer | undefined, string | undefined]> {
  if (!isUuid(id)) return $multi(undefined, undefined);
  const [found, err] = kong.db.consumers.select({ id });
  return $multi(found, err);
}

/** The consumer with this username. */
export function byUsername(this: void, username: string): LuaMultiReturn<[KongConsumer | undefined, string | undefined]> {
  if (username === "") return $multi(undefined, undefined);
  const [found, err] = kong.db.consumers.select_by_username(username);
  return $multi(found, err);
}

/** By id when it is a uuid, else (or when no consumer has that id) by username: Kong's order for `/consumers/{id or username}`. */
export function byIdOrUsername(this: void, value: string): LuaMultiReturn<[KongConsumer | undefined, string | undefined]> {
  const [found, err] = byId(value);
  if (found !== undefined || err !== undefined) return $multi(found, err);
  return byUsername(value);
}
