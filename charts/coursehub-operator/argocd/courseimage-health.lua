-- Argo CD health of a coursehub.dev CourseImage (argocd-cm key
-- resource.customizations.health.coursehub.dev_CourseImage). Lua 5.1, as Argo CD runs it.
--
-- The operator's Ready condition summarises the others; its reason is the reason of the
-- first condition that is not True. Healthy only when Ready is True *for the current
-- generation*: right after an edit the old Ready still says True, and Argo CD must not
-- call that healthy before the operator has looked at the new spec.
local hs = {}

-- Reasons that mean "under way, will settle by itself": Progressing, not Degraded.
local transient = {
  Pending = true,          -- a condition not evaluated yet
  Progressing = true,
  Resolving = true,        -- the registry lookup of spec.image is under way
  NotResolved = true,      -- a hub waits for the first resolution
  Publishing = true,       -- a hub selects the course and publishes it in its next round
  NotPublished = true,     -- pre-pulling waits for a hub to publish the course
  WaitingForPull = true,   -- publishAfterPull: offered once every node has the image
  Pulling = true,          -- the pre-puller DaemonSet is rolling out
  BuildQueued = true,      -- spec.build: a new commit waits for a build slot
  Building = true,         -- spec.build: its build Job runs
  WaitingForBuild = true,  -- spec.build: the first build has not pushed the image yet
}

local generation = obj.metadata.generation
local status = obj.status

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "being deleted: unpublishing from its hubs"
  return hs
end
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to report status"
  return hs
end
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = nil
for _, c in ipairs(status.conditions) do
  if c.type == "Ready" then
    ready = c
  end
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the Ready condition"
  return hs
end
if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

-- spec.build: the newest commit's build. Learners keep the last good image while a newer
-- build runs or after one failed, so Ready may be True; Argo CD still shows it: a running
-- build is Progressing, a failed one Degraded (its message names the failing step).
local built = nil
for _, c in ipairs(status.conditions) do
  if c.type == "Built" then
    built = c
  end
end
if ready.status == "True" and built ~= nil and built.status == "False" then
  local bmsg = "Built " .. (built.reason or "") .. ": " .. (built.message or "")
  if transient[built.reason or ""] then
    hs.status = "Progressing"
  else
    hs.status = "Degraded"
  end
  hs.message = bmsg .. " (learners keep the last good image)"
  return hs
end

local reason = ready.reason or ""
local message = ready.message or ""
if reason ~= "" then
  message = reason .. ": " .. message
end
if ready.status == "True" then
  hs.status = "Healthy"
elseif ready.status == "False" and not transient[reason] then
  hs.status = "Degraded"
else
  -- False with a transient reason, or Unknown (not decided yet).
  hs.status = "Progressing"
end
if hs.status ~= "Healthy" then
  -- Ready names only the first failing condition (or refers to others, as
  -- WaitingForSecrets does): list the other failing ones, so one look is enough.
  for _, c in ipairs(status.conditions) do
    if c.type ~= "Ready" and c.status == "False" and c.reason ~= reason and not transient[c.reason] then
      message = message .. "; " .. c.type .. " " .. (c.reason or "") .. ": " .. (c.message or "")
    end
  end
end
hs.message = message
return hs
