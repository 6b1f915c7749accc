namespace DistGpt.Model.Training;

/// <summary>An optimizer whose state lives elsewhere (parameter shards on the worker silos): the training loop hands it
/// each step's learning rate and gradient scale, and has it bring the weights (and, for a checkpoint, the moments) back
/// into the local model and AdamW before it evaluates or saves.</summary>
public interface IRemoteOptimizer
{
    void Step(long step, float lr, float gradScale);

    /// <summary>The latest weights into the local model, and with <paramref name="moments"/> the optimizer's moments and
    /// step count into the local AdamW.</summary>
    void Gather(bool moments);
}
