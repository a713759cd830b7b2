/** ioredis's own slot function (its dependency cluster-key-slot), which ships no types. */
declare module "cluster-key-slot" {
  function calculateSlot(key: string | Buffer): number;
  export default calculateSlot;
}
