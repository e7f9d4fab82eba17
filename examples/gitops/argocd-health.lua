-- Argo CD health check for mft.dev/MFTJob (resource.customizations.health.mft.dev_MFTJob in argocd-cm).
local hs = {status = "Progressing", message = "waiting for the MFTJob operator"}
if obj.status == nil then
  return hs
end
local conditions = {}
for _, condition in ipairs(obj.status.conditions or {}) do
  if condition.status == "True" then
    conditions[condition.type] = condition
  end
end
local function from(condition, status)
  hs.status = status
  hs.message = condition.message or condition.reason or condition.type
  return hs
end
if conditions.Failed then return from(conditions.Failed, "Degraded") end
if conditions.Succeeded then return from(conditions.Succeeded, "Healthy") end
if conditions.Suspended then return from(conditions.Suspended, "Suspended") end
if conditions.Blocked then return from(conditions.Blocked, "Degraded") end
local phase = obj.status.phase or "Pending"
local progress = obj.status.progress
if progress ~= nil and progress.summary ~= nil then
  hs.message = phase .. ": step " .. progress.summary
else
  hs.message = phase
end
return hs
