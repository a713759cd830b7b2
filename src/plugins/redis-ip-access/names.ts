/**
 * Names of shared lists: short and plain, so that a name is its own Redis key part and
 * hash tag. Pure Lua: the schema validates with it outside nginx.
 */
export const LIST_NAME_PATTERN = "^[%w._-]+$";
export const MAX_LIST_NAME = 64;

export function validListName(this: void, name: unknown): boolean {
  return type(name) === "string" && (name as string).length <= MAX_LIST_NAME && string.find(name as string, LIST_NAME_PATTERN)[0] !== undefined;
}
