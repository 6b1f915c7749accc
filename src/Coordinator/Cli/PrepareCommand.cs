using System.CommandLine;
using DistGpt.Model;
using DistGpt.Model.Data;

namespace DistGpt.Coordinator.Cli;

/// <summary>`distgpt prepare`: a text file into nanoGPT's token files (train.bin, val.bin) and meta.json.</summary>
public static class PrepareCommand
{
    public static Command Create()
    {
        var input = new Option<string>("--input") { Description = "UTF-8 text file", Required = true };
        var tokenizer = new Option<string>("--tokenizer") { Description = "char (nanoGPT's shakespeare_char) or gpt2 (tiktoken's GPT-2 BPE)", DefaultValueFactory = _ => Tokenizers.Char };
        var output = new Option<string>("--out") { Description = "directory for train.bin, val.bin and meta.json", Required = true };
        var valFraction = new Option<double>("--val-fraction") { Description = "the last part of the text kept for validation", DefaultValueFactory = _ => 0.1 };
        var overwrite = new Option<bool>("--overwrite") { Description = "replace token files already in --out" };
        var command = new Command("prepare", "Tokenize a text file into train.bin / val.bin (nanoGPT's format) for --data DIR.")
            { input, tokenizer, output, valFraction, overwrite };
        command.SetAction((r, _) => ExitCodes.Guard(() =>
        {
            string dir = r.GetValue(output)!, name = r.GetValue(tokenizer)!;
            if (name is not (Tokenizers.Char or Tokenizers.Gpt2)) throw new ConfigException($"--tokenizer must be {Tokenizers.Char} or {Tokenizers.Gpt2}");
            if (File.Exists(dir)) throw new ConfigException($"--out '{dir}' is a file, not a directory");
            if (!r.GetValue(overwrite) && (File.Exists(Path.Combine(dir, TokenFiles.TrainFile)) || File.Exists(Path.Combine(dir, TokenFiles.ValFile))))
                throw new ConfigException($"--out '{dir}' already holds token files; pass --overwrite to replace them");
            var result = Preparation.Prepare(r.GetValue(input)!, name, dir, r.GetValue(valFraction));
            Console.WriteLine($"{result.Characters:N0} characters → {result.TrainTokens:N0} train and {result.ValTokens:N0} val tokens " +
                $"({name}, vocabulary {result.VocabSize:N0}) in {dir}");
            return 0;
        }));
        return command;
    }
}
